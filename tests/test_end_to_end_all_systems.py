"""One erasure through the API across every kind of system: Postgres, SCIM, LDAP, S3 backups and an OpenDSR partner.

The issue's own check: the subject leaves Postgres, the SCIM server and the LDAP server, the backups are tagged
beyond use with a ledger entry holding no plaintext identifier, and the partner's verified callback completes its
part; a forged callback is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from urllib.parse import urlsplit

import asyncpg
import boto3
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from tests.connectors.ldap_server import JANE, seed_tree, shared_slapd
from tests.connectors.opendsr_partner import Partner, make_key, running_partner
from tests.connectors.scim_server import Directory, scim_server
from tests.helpers import HASH_SECRET_ENV, api_settings, fides_settings
from workers.config import ApiToken, SystemSettings, TemporalSettings
from workers.worker import request_worker

__all__ = ["scim_server"]  # the fixture, used here

PORTAL = "portal-" + uuid.uuid4().hex
ADMIN = "admin-" + uuid.uuid4().hex


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(client: TestClient, rid: str) -> dict:
    return await (await client.get(f"/v1/requests/{rid}", headers=_auth(PORTAL))).json()


async def _until(client: TestClient, rid: str, pred, what: str) -> dict:
    for _ in range(400):
        status = await _status(client, rid)
        if pred(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {what}: {status}")


async def test_one_erasure_across_every_kind_of_system(temporal_env, fides_db, orchestrator_db, tmp_path,
                                                       s3_endpoint, scim_server, monkeypatch):
    assert JANE == "jane@example.com"
    monkeypatch.setenv(HASH_SECRET_ENV, "e2e-secret")
    # The directory over SCIM: jane in a group with a colleague.
    directory = Directory(scim_server.url, scim_server.token)
    jane_scim = await directory.user(JANE)
    colleague = await directory.user(f"colleague-{uuid.uuid4().hex[:8]}@example.com")
    group = await directory.group("staff-" + uuid.uuid4().hex[:6], jane_scim, colleague)
    # The LDAP directory: a fresh subtree with jane in two groups.
    tree = seed_tree(shared_slapd())
    # The backups: two nightly dumps in a bucket of their own.
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = "backups-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    for night in ("mon", "tue"):
        s3.put_object(Bucket=bucket, Key=f"nightly/{night}.dump", Body=b"dump")

    tokens = [ApiToken(name=n, sha256=hashlib.sha256(t.encode()).hexdigest(), role=r, tenant="acme")
              for n, t, r in (("portal", PORTAL, "portal"), ("admin-acme", ADMIN, "admin"))]
    settings = fides_settings(fides_db, tmp_path, api=api_settings(tokens),
                              temporal=TemporalSettings(task_queue="all-" + uuid.uuid4().hex[:8]))
    settings.systems["directory"] = SystemSettings(type="scim", base_url=scim_server.url, token=scim_server.token)
    settings.systems["ldap"] = SystemSettings(type="ldap", **tree.options(empty_group_member=tree.user("janet")))
    settings.systems["backups"] = SystemSettings(type="s3_backups", bucket=bucket, prefix="nightly/",
                                                 endpoint_url=s3_endpoint, retention_days=35)
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
            resp = await client.post("/v1/requests", json={"kind": "erasure", "identities": {"email": JANE}},
                                     headers={**_auth(PORTAL), "Idempotency-Key": uuid.uuid4().hex})
            rid = (await resp.json())["id"]
            await _until(client, rid, lambda s: s["step"] == "awaiting_approval", "awaiting approval")
            resp = await client.post(f"/v1/requests/{rid}/decision", json={"outcome": "approve"}, headers=_auth(ADMIN))
            assert resp.status == 200, await resp.text()
            expected = {"appdb": "done", "directory": "done", "ldap": "done", "backups": "awaiting_expiry",
                        "partner": "awaiting_partner"}
            status = await _until(
                client, rid, lambda s: {n: st["state"] for n, st in s["systems"].items()} == expected,
                "all systems at their expected states")

            [(reference, sent)] = partner.requests.items()
            callback_path = urlsplit(sent["status_callback_urls"][0]).path
            partner.set_status(reference, "completed")
            forged, forged_headers = partner.callback(reference, key=make_key())
            assert (await client.post(callback_path, data=forged, headers=forged_headers)).status == 403
            body, headers = partner.callback(reference)
            assert (await client.post(callback_path, data=body, headers=headers)).status == 200
            status = await _until(client, rid, lambda s: s["systems"]["partner"]["state"] == "done",
                                  "the partner done")
            await temporal_env.client.get_workflow_handle(rid).terminate("test over: backups expire in 35 days")

    assert status["systems"]["backups"]["completes_at"]
    # Postgres: jane's email is gone, another customer untouched.
    conn = await asyncpg.connect(fides_db)
    assert await conn.fetchval("SELECT email FROM customer WHERE id = 3") != JANE
    assert await conn.fetchval("SELECT email FROM customer WHERE id = 1") == "customer-1@example.com"
    await conn.close()
    # SCIM: jane's account is gone, her colleague stays in the group.
    assert await directory.get("Users", jane_scim) is None
    assert await directory.members(group) == [colleague]
    # LDAP: jane's entry is gone and she is in no group.
    assert tree.entry(tree.user("jane")) is None
    assert tree.user("jane") not in tree.members("staff") and tree.user("john") in tree.members("staff")
    # S3: every backup is beyond use; the ledger holds keyed hashes only.
    for night in ("mon", "tue"):
        tag_set = s3.get_object_tagging(Bucket=bucket, Key=f"nightly/{night}.dump")["TagSet"]
        tags = {t["Key"]: t["Value"] for t in tag_set}
        assert tags["dsr-beyond-use"] == "true"
    conn = await asyncpg.connect(orchestrator_db)
    ledger = repr([dict(r) for r in await conn.fetch("SELECT * FROM dsr_erasure_ledger WHERE request_id = $1", rid)])
    await conn.close()
    assert "identity_hmac" in ledger and "jane" not in ledger.lower() and "jane%40" not in ledger.lower()
