"""One full path through the HTTP API on the Temporal dev server, with the real worker and Fides' example."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
import zipfile
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from tests.helpers import HASH_SECRET_ENV, api_settings, fides_settings
from workers.config import ApiSettings, ApiToken, TemporalSettings
from workers.worker import request_worker
from workflows.models import TERMINAL_STEPS

PORTAL = "portal-token-" + uuid.uuid4().hex
ADMIN = "admin-token-" + uuid.uuid4().hex


def _token(name: str, secret: str, role: str) -> ApiToken:
    return ApiToken(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), role=role, tenant="acme")


async def _until_terminal(client: TestClient, rid: str) -> dict:
    for _ in range(600):
        resp = await client.get(f"/v1/requests/{rid}", headers={"Authorization": f"Bearer {PORTAL}"})
        assert resp.status == 200
        body = await resp.json()
        if body["step"] in {s.value for s in TERMINAL_STEPS}:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"request still at {body['step']}")


async def _submit_and_approve(client: TestClient, kind: str, email: str) -> dict:
    resp = await client.post(
        "/v1/requests",
        json={"kind": kind, "identities": {"email": email}},
        headers={"Authorization": f"Bearer {PORTAL}", "Idempotency-Key": uuid.uuid4().hex},
    )
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    assert "@" not in rid
    for _ in range(100):
        resp = await client.get(f"/v1/requests/{rid}", headers={"Authorization": f"Bearer {ADMIN}"})
        if (await resp.json())["step"] == "awaiting_approval":
            break
        await asyncio.sleep(0.05)
    resp = await client.post(
        f"/v1/requests/{rid}/decision",
        json={"outcome": "approve", "reason": "verified by support"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert resp.status == 200, await resp.text()
    return await _until_terminal(client, rid)


async def test_access_then_erasure_through_the_api(temporal_env, fides_db, orchestrator_db, tmp_path, monkeypatch):
    monkeypatch.setenv(HASH_SECRET_ENV, "e2e-secret")
    settings = fides_settings(
        fides_db, tmp_path,
        temporal=TemporalSettings(task_queue="e2e-" + uuid.uuid4().hex[:8]),
        api=api_settings([_token("portal", PORTAL, "portal"), _token("admin-acme", ADMIN, "admin")]),
    )
    app = create_app(settings, temporal_env.client)
    async with (
        request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker,
        worker,
        TestClient(TestServer(app)) as client,
    ):
        access = await _submit_and_approve(client, "access", "jane@example.com")
        erasure = await _submit_and_approve(client, "erasure", "jane@example.com")

    assert access["step"] == "completed", access
    bundle = Path(access["bundle"]["location"])
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert hashlib.sha256(bundle.read_bytes()).hexdigest() == access["bundle"]["sha256"]
        for f in manifest["files"]:
            assert hashlib.sha256(zf.read(f["path"])).hexdigest() == f["sha256"]
    assert access["systems"]["appdb"]["exported"] == {
        "customer": 1, "orders": 1, "login": 1, "payment_card": 1, "address": 1,
    }

    assert erasure["step"] == "completed", erasure
    conn = await asyncpg.connect(fides_db)
    try:
        jane = await conn.fetchrow("SELECT email, name FROM customer WHERE id = 3")
        john = await conn.fetchrow("SELECT email, name FROM customer WHERE id = 1")
        logins = await conn.fetchval("SELECT count(*) FROM login WHERE customer_id = 3")
        order = await conn.fetchrow("SELECT customer_id FROM orders WHERE id = 'ord_ddd-eee'")
    finally:
        await conn.close()
    assert jane["email"] != "jane@example.com" and jane["name"] == "REDACTED"
    assert logins == 0
    assert order["customer_id"] == 3  # retained for tax law
    assert john["email"] == "customer-1@example.com" and john["name"] == "John Customer"

    # Temporal's own database holds no plaintext identity of the subject.
    db_file: Path = temporal_env.database_file
    for f in db_file.parent.glob(db_file.name + "*"):
        data = f.read_bytes()
        assert b"jane@example.com" not in data
        assert b"Jane Customer" not in data


@pytest.mark.parametrize("body", [b"{not json", b'{"kind": "access"}', b'{"kind": "teleport", "identities": {}}'])
async def test_bad_input_starts_nothing(temporal_env, fides_db, tmp_path, body):
    settings = fides_settings(
        fides_db, tmp_path,
        temporal=TemporalSettings(task_queue="bad-" + uuid.uuid4().hex[:8]),
        api=ApiSettings(tokens=[_token("portal", PORTAL, "portal")]),
    )
    before = [w async for w in temporal_env.client.list_workflows(f"TaskQueue = '{settings.temporal.task_queue}'")]
    async with TestClient(TestServer(create_app(settings, temporal_env.client))) as client:
        resp = await client.post(
            "/v1/requests", data=body,
            headers={"Authorization": f"Bearer {PORTAL}", "Content-Type": "application/json"},
        )
        assert 400 <= resp.status < 500
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert {"type", "title", "status"} <= problem.keys()
    after = [w async for w in temporal_env.client.list_workflows(f"TaskQueue = '{settings.temporal.task_queue}'")]
    assert before == after == []
