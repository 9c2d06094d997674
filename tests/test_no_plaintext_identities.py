"""After every kind of request ran end to end, the orchestrator holds no identifier of the subject in plain text.

A subject of its own (a unique e-mail, name and street, so that no other test's data can answer for it) goes
through all nine kinds of request via the HTTP API, on the dev server with the real worker and Fides' example
database. Then Temporal's SQLite files, the structured logs (as rendered, after the scrubbing processor), the
standard-library log records and the metrics (the API's ``/metrics`` and the worker's registry) are
scanned for each identifier: raw, lowercased, upper-cased and URL-encoded. None may appear.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from tests.helpers import HASH_SECRET_ENV, add_rights_columns, api_settings, fides_settings
from workers.config import ApiToken, TemporalSettings
from workers.logs import configure_logging
from workers.metrics import render
from workers.worker import request_worker
from workflows.models import TERMINAL_STEPS

PORTAL = "portal-" + uuid.uuid4().hex
ADMIN = "admin-" + uuid.uuid4().hex
TAG = uuid.uuid4().hex[:10]
EMAIL = f"Zora.Quill+{TAG}@Example.org"
NAME = f"Zora Quill {TAG}"
STREET = f"Quillstrasse {TAG}"
CORRECTED = f"Zora Q. Quill {TAG}"
SECRETS = [EMAIL, NAME, STREET, CORRECTED]


def variants(value: str) -> set[bytes]:
    """The forms an identifier could leak in (an e-mail also as validation normalises it: the domain lowercased)."""
    bases = {value, value.lower(), value.upper()}
    if "@" in value:
        local, _, domain = value.rpartition("@")
        bases.add(f"{local}@{domain.lower()}")
    forms = set()
    for base in bases:
        forms |= {base, quote(base), quote_plus(base), quote(base, safe="")}
    return {f.encode() for f in forms}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def rendered_logs() -> AsyncIterator[io.StringIO]:
    """The structured logs as the processes render them (JSON, after the scrubbing processor), into a buffer."""
    buffer = io.StringIO()
    configure_logging(json_output=True, stream=buffer, force=True)
    try:
        yield buffer
    finally:
        configure_logging(force=True)


@pytest.fixture
async def api(temporal_env, fides_db, orchestrator_db, tmp_path, monkeypatch) -> AsyncIterator[TestClient]:
    monkeypatch.setenv(HASH_SECRET_ENV, "pii-secret")
    await add_rights_columns(fides_db)
    conn = await asyncpg.connect(fides_db)
    try:
        await conn.execute("INSERT INTO address VALUES (77, '9', $1, 'Quilltown', 'NY', '10101')", STREET)
        await conn.execute("INSERT INTO customer (id, email, name, created, address_id) "
                           "VALUES (77, $1, $2, now(), 77)", EMAIL.lower(), NAME)
    finally:
        await conn.close()
    tokens = [ApiToken(name=n, sha256=hashlib.sha256(t.encode()).hexdigest(), role=r, tenant="acme")
              for n, t, r in (("portal", PORTAL, "portal"), ("admin-acme", ADMIN, "admin"))]
    settings = fides_settings(fides_db, tmp_path, rights=True, api=api_settings(tokens),
                              temporal=TemporalSettings(task_queue="pii-" + uuid.uuid4().hex[:8]))
    settings.tenants["acme"].dispute_notice_days = 0
    async with (
        request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker,
        worker,
        TestClient(TestServer(create_app(settings, temporal_env.client))) as client,
    ):
        yield client


async def _until(client: TestClient, rid: str, steps: set[str]) -> dict[str, Any]:
    for _ in range(600):
        status = await (await client.get(f"/v1/requests/{rid}", headers=_auth(PORTAL))).json()
        if status["step"] in steps:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{rid} still at {status['step']}")


async def _run(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/v1/requests", json={**body, "identities": {"email": EMAIL}},
                             headers={**_auth(PORTAL), "Idempotency-Key": uuid.uuid4().hex})
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    ended = {s.value for s in TERMINAL_STEPS}
    status = await _until(client, rid, ended | {"awaiting_approval", "restricted"})
    if status["step"] == "awaiting_approval":
        resp = await client.post(f"/v1/requests/{rid}/decision", json={"outcome": "approve", "reason": "ok"},
                                 headers=_auth(ADMIN))
        assert resp.status == 200, await resp.text()
        status = await _until(client, rid, ended | {"restricted"})
    if status["step"] == "restricted":
        resp = await client.post(f"/v1/requests/{rid}/lifting", json={"reason": "accuracy verified"},
                                 headers=_auth(ADMIN))
        assert resp.status == 200, await resp.text()
        status = await _until(client, rid, ended)
    assert status["step"] == "completed", status
    return status


KINDS: list[dict[str, Any]] = [
    {"kind": "access"},
    {"kind": "export"},
    {"kind": "rectification", "details": {"corrections": {"user.name": CORRECTED}}},
    {"kind": "restriction", "details": {"grounds": "I contest the accuracy"}},
    {"kind": "objection", "details": {"purpose": "marketing"}},
    {"kind": "opt_out"},
    {"kind": "consent_withdrawal", "details": {"purpose": "marketing"}},
    {"kind": "deactivation"},
    {"kind": "erasure"},
]


async def test_no_identifier_of_the_subject_in_plain_text(smtp_sink, api, temporal_env, rendered_logs, caplog):
    caplog.set_level(logging.DEBUG)
    done = [await _run(api, body) for body in KINDS]
    assert [s["kind"] for s in done] == [k["kind"] for k in KINDS]
    assert done[0]["systems"]["appdb"]["found"]["customer"] == 1  # the subject was really found

    # The logs did record the work (so the scan below looks at something).
    logs = rendered_logs.getvalue()
    assert all(s["id"] in logs for s in done)

    db_file: Path = temporal_env.database_file
    haystacks: dict[str, bytes] = {f.name: f.read_bytes() for f in db_file.parent.glob(db_file.name + "*")}
    haystacks["structured logs"] = logs.encode()
    resp = await api.get("/metrics")
    assert resp.status == 200
    haystacks["API metrics"] = await resp.read()
    haystacks["worker metrics"] = render()
    assert b"dsr_requests_finished_total" in haystacks["worker metrics"]  # the metrics did count this work
    # Every stdlib record but the test's own SMTP server's ("mail.log"), which stands in for the company's mail
    # relay: it legitimately sees the address the notices go to.
    haystacks["stdlib log records"] = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if r.name != "mail.log").encode()
    assert haystacks[db_file.name]  # Temporal's database is there and not empty
    found = [(where, form) for where, data in haystacks.items()
             for secret in SECRETS for form in variants(secret) if form in data]
    assert found == []
    # The scan does find an identifier where one legitimately is: the notices mailed to the subject.
    mail = b"".join(m.content for m in smtp_sink.messages)
    assert any(form in mail for form in variants(EMAIL))
