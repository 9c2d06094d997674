"""``GET /v1/requests/{id}/audit``: real records in a real orchestrator database (embedded PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient

from activities.db import create_pool, record_audit
from tests.api.support import api_client, assert_problem, auth, create
from workflows.tasks import AuditEvent

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
async def database(orchestrator_db: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    yield orchestrator_db


@pytest.fixture
async def api(idle_settings, temporal_env, database) -> AsyncIterator[TestClient]:
    async with api_client(idle_settings.model_copy(update={"database_url": database}), temporal_env.client) as tc:
        yield tc


async def _record(url: str, request_id: str, tenant: str) -> None:
    pool = await create_pool(url)  # as the worker does: creates the tables
    try:
        await record_audit(pool, AuditEvent(request_id=request_id, tenant=tenant, event="received",
                                            detail={"kind": "erasure"}, at=T0))
        await record_audit(pool, AuditEvent(request_id=request_id, tenant=tenant, event="decided",
                                            outcome="approve", actor="admin-acme", at=T0 + timedelta(hours=2)))
        await record_audit(pool, AuditEvent(request_id=request_id, tenant=tenant, event="erased", system="appdb",
                                            detail={"deleted": 3}, at=T0 + timedelta(hours=3)))
    finally:
        await pool.close()


async def test_the_records_of_a_request(api, database):
    request_id = await create(api, "portal-acme", "erasure")
    other = await create(api, "portal-globex", "erasure")
    await _record(database, request_id, "acme")
    await _record(database, other, "globex")

    for token in ("admin-acme", "officer", "officer-acme", "auditor"):
        resp = await api.get(f"/v1/requests/{request_id}/audit", headers=auth(token))
        assert resp.status == 200, (token, await resp.text())
        doc = await resp.json()
        assert doc["request_id"] == request_id
        assert [(r["event"], r["system"], r["outcome"], r["actor"]) for r in doc["records"]] == [
            ("received", None, "ok", None), ("decided", None, "approve", "admin-acme"),
            ("erased", "appdb", "ok", None)]
        assert doc["records"][2]["detail"] == {"deleted": 3}
        assert datetime.fromisoformat(doc["records"][0]["at"]) == T0
        assert {r["tenant"] for r in doc["records"]} == {"acme"}

    # Another tenant's request is not found, for an admin and a privacy officer limited to acme.
    for token in ("admin-acme", "officer-acme"):
        await assert_problem(await api.get(f"/v1/requests/{other}/audit", headers=auth(token)), 404)
    await assert_problem(await api.get(f"/v1/requests/{request_id}/audit", headers=auth("admin-globex")), 404)
    # A portal token reads statuses, not the evidence trail.
    await assert_problem(await api.get(f"/v1/requests/{request_id}/audit", headers=auth("portal-acme")), 403)


async def test_a_request_without_records_and_one_that_does_not_exist(api):
    request_id = await create(api, "portal-acme", "access")  # on the idle queue: no worker wrote anything
    resp = await api.get(f"/v1/requests/{request_id}/audit", headers=auth("auditor"))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["records"] == []
    await assert_problem(await api.get(f"/v1/requests/{request_id}/audit", headers=auth("admin-globex")), 404)
    for missing in ("req_aaaaaaaaaaaaaaaaaaaaaaaaaa", "jane.doe@example.com"):
        await assert_problem(await api.get(f"/v1/requests/{missing}/audit", headers=auth("auditor")), 404)


async def test_without_a_database_the_route_is_503(idle_settings, temporal_env, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    async with api_client(idle_settings.model_copy(update={"database_url": None}), temporal_env.client) as tc:
        resp = await tc.get("/v1/requests/req_aaaaaaaaaaaaaaaaaaaaaaaaaa/audit", headers=auth("auditor"))
        doc = await assert_problem(resp, 503)
        assert "database" in doc["detail"]
