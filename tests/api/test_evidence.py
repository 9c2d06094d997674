"""``GET /v1/requests/{id}/evidence`` and ``.html``: the report from the status and the hash-chained trail."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.api.support import api_client, assert_problem, auth, create
from tests.api.test_audit_route import _record


@pytest.fixture
async def api(idle_settings, temporal_env, orchestrator_db, monkeypatch) -> AsyncIterator[TestClient]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = idle_settings.model_copy(update={"database_url": orchestrator_db})
    async with api_client(settings, temporal_env.client) as tc:
        tc.database = orchestrator_db  # type: ignore[attr-defined]
        yield tc


async def test_the_evidence_report(api):
    request_id = await create(api, "portal-acme", "erasure")
    other = await create(api, "portal-globex", "erasure")
    await _record(api.database, request_id, "acme")
    await _record(api.database, other, "globex")
    conn = await asyncpg.connect(api.database)
    head = await conn.fetchval("SELECT hash FROM dsr_audit WHERE tenant = 'acme' ORDER BY seq DESC LIMIT 1")
    await conn.close()

    for token in ("admin-acme", "officer", "auditor"):
        resp = await api.get(f"/v1/requests/{request_id}/evidence", headers=auth(token))
        assert resp.status == 200, (token, await resp.text())
        report = await resp.json()
        assert (report["request_id"], report["tenant"], report["kind"]) == (request_id, "acme", "erasure")
        assert [(r["seq"], r["event"]) for r in report["records"]] == [(1, "received"), (2, "decided"), (3, "erased")]
        assert report["chain_head"] == head == report["records"][-1]["hash"]
        assert report["due_at"] and report["extended"] is False

    resp = await api.get(f"/v1/requests/{request_id}/evidence.html", headers=auth("officer"))
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert "<h1>Evidence report</h1>" in page and request_id in page and "erased" in page
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]

    await assert_problem(await api.get(f"/v1/requests/{request_id}/evidence", headers=auth("portal-acme")), 403)
    await assert_problem(await api.get(f"/v1/requests/{other}/evidence", headers=auth("admin-acme")), 404)
    await assert_problem(await api.get(f"/v1/requests/{other}/evidence.html", headers=auth("admin-acme")), 404)
