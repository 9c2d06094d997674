"""An erasure told to an OpenDSR partner, completed by the partner's signed callback, all through the HTTP API."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from urllib.parse import urlsplit

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from tests.connectors.opendsr_partner import Partner, make_key, running_partner
from tests.helpers import HASH_SECRET_ENV, api_settings, fides_settings
from workers.config import ApiToken, SystemSettings, TemporalSettings
from workers.worker import request_worker

PORTAL = "portal-" + uuid.uuid4().hex
ADMIN = "admin-" + uuid.uuid4().hex


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(client: TestClient, rid: str) -> dict:
    return await (await client.get(f"/v1/requests/{rid}", headers=_auth(PORTAL))).json()


async def test_erasure_waits_for_the_partners_signed_callback(temporal_env, fides_db, orchestrator_db, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv(HASH_SECRET_ENV, "e2e-secret")
    tokens = [ApiToken(name=n, sha256=hashlib.sha256(t.encode()).hexdigest(), role=r, tenant="acme")
              for n, t, r in (("portal", PORTAL, "portal"), ("admin-acme", ADMIN, "admin"))]
    settings = fides_settings(fides_db, tmp_path, api=api_settings(tokens),
                              temporal=TemporalSettings(task_queue="partner-" + uuid.uuid4().hex[:8]))
    async with running_partner(Partner()) as partner:
        app = create_app(settings, temporal_env.client)
        async with (
            request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker,
            worker,
            TestClient(TestServer(app)) as client,
        ):
            settings.systems["partner"] = SystemSettings(
                type="opendsr", base_url=partner.url + "/v1/", processor_domain=partner.domain,
                callback_base=str(client.make_url("/v1/callbacks/opendsr")),
            )
            body = {"kind": "erasure", "identities": {"email": "jane@example.com"}}
            resp = await client.post("/v1/requests", json=body,
                                     headers={**_auth(PORTAL), "Idempotency-Key": uuid.uuid4().hex})
            rid = (await resp.json())["id"]
            for _ in range(100):
                if (await _status(client, rid))["step"] == "awaiting_approval":
                    break
                await asyncio.sleep(0.05)
            resp = await client.post(f"/v1/requests/{rid}/decision", json={"outcome": "approve"}, headers=_auth(ADMIN))
            assert resp.status == 200, await resp.text()
            for _ in range(200):
                status = await _status(client, rid)
                states = {n: st["state"] for n, st in status["systems"].items()}
                if states == {"appdb": "done", "partner": "awaiting_partner"}:
                    break
                await asyncio.sleep(0.05)
            assert status["systems"]["partner"]["state"] == "awaiting_partner", status
            assert status["systems"]["appdb"]["state"] == "done"  # the partner never blocks the other systems

            [(reference, sent)] = partner.requests.items()
            uuid.UUID(reference, version=4)
            assert {"identity_type": "email", "identity_value": "jane@example.com", "identity_format": "raw"} \
                in sent["subject_identities"]
            callback_path = urlsplit(sent["status_callback_urls"][0]).path

            # A forged callback (right domain, wrong key) is refused and changes nothing.
            partner.set_status(reference, "completed")
            forged, forged_headers = partner.callback(reference, key=make_key())
            assert (await client.post(callback_path, data=forged, headers=forged_headers)).status == 403
            await asyncio.sleep(0.3)
            assert (await _status(client, rid))["step"] != "completed"

            body, headers = partner.callback(reference)
            resp = await client.post(callback_path, data=body, headers=headers)
            assert resp.status == 200, await resp.text()
            for _ in range(200):
                status = await _status(client, rid)
                if status["step"] == "completed":
                    break
                await asyncio.sleep(0.05)
    assert status["step"] == "completed", status
    assert status["systems"]["partner"]["state"] == "done"
    conn = await asyncpg.connect(fides_db)
    assert await conn.fetchval("SELECT email FROM customer WHERE id = 3") != "jane@example.com"
    await conn.close()


async def test_erasure_with_a_manual_task_completes_when_an_admin_confirms(temporal_env, fides_db, orchestrator_db,
                                                                           tmp_path, monkeypatch):
    monkeypatch.setenv(HASH_SECRET_ENV, "e2e-secret")
    tokens = [ApiToken(name=n, sha256=hashlib.sha256(t.encode()).hexdigest(), role=r, tenant="acme")
              for n, t, r in (("portal", PORTAL, "portal"), ("admin-acme", ADMIN, "admin"))]
    settings = fides_settings(fides_db, tmp_path, api=api_settings(tokens),
                              temporal=TemporalSettings(task_queue="manual-" + uuid.uuid4().hex[:8]))
    settings.systems["print_shop"] = SystemSettings(type="manual_task", instructions="Delete the customer by hand.")
    app = create_app(settings, temporal_env.client)
    async with (
        request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker,
        worker,
        TestClient(TestServer(app)) as client,
    ):
        body = {"kind": "erasure", "identities": {"email": "jane@example.com"}}
        resp = await client.post("/v1/requests", json=body,
                                 headers={**_auth(PORTAL), "Idempotency-Key": uuid.uuid4().hex})
        rid = (await resp.json())["id"]
        for _ in range(100):
            if (await _status(client, rid))["step"] == "awaiting_approval":
                break
            await asyncio.sleep(0.05)
        resp = await client.post(f"/v1/requests/{rid}/decision", json={"outcome": "approve"}, headers=_auth(ADMIN))
        assert resp.status == 200, await resp.text()
        for _ in range(200):
            status = await _status(client, rid)
            states = {n: st["state"] for n, st in status["systems"].items()}
            if states == {"appdb": "done", "print_shop": "awaiting_partner"}:
                break
            await asyncio.sleep(0.05)
        assert status["systems"]["print_shop"]["state"] == "awaiting_partner", status
        assert status["step"] != "completed"

        # The admin's queue shows the task (visibility may lag a moment behind the start).
        for _ in range(100):
            listed = (await (await client.get("/v1/tasks", headers=_auth(ADMIN))).json())["tasks"]
            if any(t["request_id"] == rid for t in listed):
                break
            await asyncio.sleep(0.1)
        [task] = [t for t in listed if t["request_id"] == rid]
        assert task["system"] == "print_shop" and task["instructions"] == "Delete the customer by hand."
        assert (await client.get("/v1/tasks", headers=_auth(PORTAL))).status == 403

        path = task["confirm"]
        assert (await client.post(path, json={}, headers=_auth(PORTAL))).status == 403  # admins only
        resp = await client.post(path, json={"note": "removed in the shop's console"}, headers=_auth(ADMIN))
        assert resp.status == 200, await resp.text()
        for _ in range(200):
            status = await _status(client, rid)
            if status["step"] == "completed":
                break
            await asyncio.sleep(0.05)
    assert status["step"] == "completed", status
    assert status["systems"]["print_shop"]["state"] == "done"
    assert status["systems"]["print_shop"]["error"] is None
    conn = await asyncpg.connect(orchestrator_db)
    try:
        rows = await conn.fetch("SELECT actor, at, detail::text AS detail FROM dsr_audit "
                                "WHERE request_id = $1 AND event = 'confirmed' AND system = 'print_shop'", rid)
    finally:
        await conn.close()
    assert [r["actor"] for r in rows] == ["admin-acme"] and rows[0]["at"] is not None
    assert "jane" not in rows[0]["detail"] and "console" not in rows[0]["detail"]
