"""Every right besides access and erasure, through the HTTP API on the dev server with the real worker."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from email import message_from_bytes
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from tests.helpers import HASH_SECRET_ENV, add_rights_columns, api_settings, fides_settings
from workers.config import ApiToken, TemporalSettings
from workers.worker import request_worker
from workflows.models import TERMINAL_STEPS

PORTAL = "portal-" + uuid.uuid4().hex
ADMIN = "admin-" + uuid.uuid4().hex


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(temporal_env, fides_db, orchestrator_db, tmp_path, monkeypatch) -> AsyncIterator[TestClient]:
    monkeypatch.setenv(HASH_SECRET_ENV, "e2e-secret")
    await add_rights_columns(fides_db)
    tokens = [ApiToken(name=n, sha256=hashlib.sha256(t.encode()).hexdigest(), role=r, tenant="acme")
              for n, t, r in (("portal", PORTAL, "portal"), ("admin-acme", ADMIN, "admin"))]
    settings = fides_settings(fides_db, tmp_path, rights=True, api=api_settings(tokens),
                              temporal=TemporalSettings(task_queue="kinds-" + uuid.uuid4().hex[:8]))
    settings.tenants["acme"].dispute_notice_days = 0  # a lifted restriction ends at once in this test
    async with (
        request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker,
        worker,
        TestClient(TestServer(create_app(settings, temporal_env.client))) as client,
    ):
        client.fides_db = fides_db  # type: ignore[attr-defined]
        yield client


async def _submit(client: TestClient, body: dict[str, Any]) -> dict:
    resp = await client.post("/v1/requests", json=body, headers={**_auth(PORTAL), "Idempotency-Key": uuid.uuid4().hex})
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    for _ in range(600):
        resp = await client.get(f"/v1/requests/{rid}", headers=_auth(PORTAL))
        status = await resp.json()
        if status["step"] in {s.value for s in TERMINAL_STEPS} | {"restricted"}:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"still at {status['step']}")


async def _jane(client: TestClient) -> asyncpg.Record:
    conn = await asyncpg.connect(client.fides_db)  # type: ignore[attr-defined]
    try:
        return await conn.fetchrow("SELECT * FROM customer WHERE id = 3")
    finally:
        await conn.close()


JANE = {"email": "jane@example.com"}


@pytest.mark.parametrize(
    ("body", "column", "value"),
    [
        ({"kind": "rectification", "details": {"corrections": {"user.name": "Jane Doe"}}}, "name", "Jane Doe"),
        ({"kind": "restriction", "details": {"grounds": "I contest the accuracy"}}, "processing_restricted", True),
        ({"kind": "objection", "details": {"purpose": "marketing"}}, "marketing_opt_in", False),
        ({"kind": "opt_out"}, "marketing_opt_in", False),
        ({"kind": "consent_withdrawal", "details": {"purpose": "marketing"}}, "marketing_opt_in", False),
        ({"kind": "deactivation"}, "active", False),
    ],
    ids=["rectification", "restriction", "objection", "opt_out", "consent_withdrawal", "deactivation"],
)
async def test_each_kind_end_to_end(api, body, column, value, smtp_sink):
    before = await _jane(api)
    status = await _submit(api, {**body, "identities": JANE})
    # A restriction stays in force (step "restricted") until an administrator lifts it.
    assert status["step"] == ("restricted" if body["kind"] == "restriction" else "completed"), status
    assert status["systems"]["appdb"]["state"] == "done"
    after = await _jane(api)
    assert after[column] == value and before[column] != value
    assert after["email"] == "jane@example.com"  # none of these deletes or masks anything
    if body["kind"] == "restriction":
        resp = await api.post(f"/v1/requests/{status['id']}/lifting", json={"reason": "address verified"},
                              headers=_auth(ADMIN))
        assert resp.status == 200, await resp.text()
        for _ in range(200):
            status = await (await api.get(f"/v1/requests/{status['id']}", headers=_auth(PORTAL))).json()
            if status["step"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert status["step"] == "completed" and (await _jane(api))[column] is False
    await asyncio.sleep(0.2)
    notices = [message_from_bytes(m.content) for m in smtp_sink.messages]
    assert any(status["id"] in m.as_string() and m["To"] == "jane@example.com" for m in notices)


async def test_unverified_request_waits_for_verification(api):
    resp = await api.post("/v1/requests", json={"kind": "deactivation", "identities": JANE, "verified": False},
                          headers={**_auth(PORTAL), "Idempotency-Key": uuid.uuid4().hex})
    rid = (await resp.json())["id"]
    for _ in range(100):
        step = (await (await api.get(f"/v1/requests/{rid}", headers=_auth(PORTAL))).json())["step"]
        if step == "awaiting_verification":
            break
        await asyncio.sleep(0.05)
    assert step == "awaiting_verification"
    assert (await _jane(api))["active"] is True
    resp = await api.post(f"/v1/requests/{rid}/verification", json={"method": "id-document"}, headers=_auth(ADMIN))
    assert resp.status == 200, await resp.text()
    for _ in range(300):
        status = await (await api.get(f"/v1/requests/{rid}", headers=_auth(PORTAL))).json()
        if status["step"] == "completed":
            break
        await asyncio.sleep(0.1)
    assert status["step"] == "completed" and status["verified_at"]
    assert (await _jane(api))["active"] is False
