"""The HTTP API against a real Temporal dev server: what it answers, and what it did (or did not) start."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from api.app import SECRETS, create_app
from api.problems import PROBLEM_JSON
from api.routes import ID_PATTERN, idempotent_request_id
from api.server import run_api
from tests.api.support import (
    LIST_SYSTEMS_GATES,
    api_client,
    assert_problem,
    auth,
    wait_for_step,
    workflow_exists,
)
from workers.codec import ENCODING
from workers.config import Settings
from workflows.models import DsrRequest, RecordedDecision, RequestStatus, Step

EMAIL = "jane.doe@example.com"


def body(kind: str = "access", **extra: Any) -> dict[str, Any]:
    """A valid create body (plus or overriding ``extra``)."""
    return {"kind": kind, "identities": {"email": EMAIL, "user_id": "u-1001"}, **extra}


def key() -> str:
    """A fresh Idempotency-Key."""
    return f"portal-submit-{uuid.uuid4()}"


def expected_id(tc: Any, tenant: str, idempotency_key: str) -> str:
    """The request id the API derives for ``idempotency_key`` from ``tenant``."""
    return idempotent_request_id(tc.server.app[SECRETS], tenant, idempotency_key)


# --- creation ------------------------------------------------------------------------------


async def test_create_starts_the_workflow_without_personal_data_in_clear(idle_api, idle_settings, temporal_env):
    client = temporal_env.client
    with capture_logs() as logs:
        resp = await idle_api.post("/v1/requests", json=body(verified_by="portal-login"), headers=auth("portal-acme"))
    assert resp.status == 201, await resp.text()
    status = RequestStatus.model_validate(await resp.json())
    assert ID_PATTERN.fullmatch(status.id)
    assert resp.headers["Location"] == f"/v1/requests/{status.id}"
    assert (status.tenant, status.kind, status.step) == ("acme", "access", Step.RECEIVED)
    assert status.due_at > status.received_at

    desc = await client.get_workflow_handle(status.id).describe()
    assert desc.workflow_type == "DataSubjectRequestWorkflow"
    assert desc.task_queue == idle_settings.temporal.task_queue
    assert desc.status == WorkflowExecutionStatus.RUNNING
    memo = await desc.memo()
    assert memo["tenant"] == "acme" and memo["kind"] == "access"
    assert len(memo["fingerprint"]) == 64
    assert EMAIL not in str(memo)

    # The input is the request, sealed by the codec: no identity in clear in Temporal's history.
    handle = client.get_workflow_handle(status.id)
    started = None
    async for event in handle.fetch_history_events():
        started = event.workflow_execution_started_event_attributes
        break
    assert started is not None
    [payload] = started.input.payloads
    assert payload.metadata["encoding"] == ENCODING
    assert EMAIL.encode() not in payload.data and b"u-1001" not in payload.data
    for field in started.memo.fields.values():
        assert field.metadata["encoding"] == ENCODING
    [request] = await client.data_converter.decode(list(started.input.payloads), [DsrRequest])
    assert request.identities.as_dict() == {"email": EMAIL, "user_id": "u-1001"}
    assert request.approval_required is True and request.verified_by == "portal-login"

    # The access log has the route template and the opaque id, nothing submitted.
    [entry] = [e for e in logs if e["event"] == "api.request"]
    assert entry == {"event": "api.request", "method": "POST", "route": "/v1/requests", "status": 201,
                     "request_id": status.id, "log_level": "info"}
    assert EMAIL not in str(logs)


async def test_same_idempotency_key_returns_the_same_request(idle_api, temporal_env):
    k = key()
    first = await idle_api.post("/v1/requests", json=body(), headers={**auth("portal-acme"), "Idempotency-Key": k})
    assert first.status == 201
    created = await first.json()
    assert created["id"] == expected_id(idle_api, "acme", k)

    # The same request again (the email differs only in case): the same request, 200.
    again = body()
    again["identities"]["email"] = EMAIL.upper()
    second = await idle_api.post("/v1/requests", json=again, headers={**auth("portal-acme"), "Idempotency-Key": k})
    assert second.status == 200, await second.text()
    assert await second.json() == created
    assert second.headers["Location"] == f"/v1/requests/{created['id']}"

    desc = await temporal_env.client.get_workflow_handle(created["id"]).describe()
    assert desc.run_id == (await temporal_env.client.get_workflow_handle(created["id"]).describe()).run_id

    # The same key from another tenant is another request.
    other = await idle_api.post("/v1/requests", json=body(), headers={**auth("portal-globex"), "Idempotency-Key": k})
    assert other.status == 201
    assert (await other.json())["id"] != created["id"]


@pytest.mark.parametrize(
    "changed",
    [
        {"identities": {"email": "someone.else@example.com", "user_id": "u-1001"}},
        {"identities": {"email": EMAIL}},
        {"kind": "erasure"},
    ],
    ids=["other-email", "fewer-identities", "other-kind"],
)
async def test_idempotency_key_reused_with_a_different_request(idle_api, changed):
    k = key()
    headers = {**auth("portal-acme"), "Idempotency-Key": k}
    first = await idle_api.post("/v1/requests", json=body(), headers=headers)
    assert first.status == 201
    resp = await idle_api.post("/v1/requests", json={**body(), **changed}, headers=headers)
    doc = await assert_problem(resp, 422)
    assert doc["detail"] == "Idempotency-Key reused with a different request"
    assert "example.com" not in await resp.text()


async def test_body_too_large_is_413(idle_api):
    huge = body(verified_by="x" * (70 * 1024))
    await assert_problem(await idle_api.post("/v1/requests", json=huge, headers=auth("portal-acme")), 413)


async def test_invalid_idempotency_key_is_refused(idle_api, temporal_env):
    for bad in ["x" * 201, "caf\u00e9"]:
        headers = {**auth("portal-acme"), "Idempotency-Key": bad}
        resp = await idle_api.post("/v1/requests", json=body(), headers=headers)
        await assert_problem(resp, 400)
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", "x" * 201))


BAD_BODIES = [
    pytest.param(b"{not json", "application/json", 400, None, id="invalid-json"),
    pytest.param(b"", "application/json", 400, None, id="empty"),
    pytest.param(b'{"kind": "access"}', "text/plain", 415, None, id="not-json-content-type"),
    pytest.param([body()], None, 422, None, id="array"),
    pytest.param(body(color="blue"), None, 422, ["color"], id="extra-field"),
    pytest.param(body(**{"jane.doe@example.com": 1}), None, 422, ["*"], id="extra-field-odd-name"),
    pytest.param({"kind": "access", "identities": {"email": EMAIL, "phone": "+1 555 0100"}}, None, 422,
                 ["identities", "phone"], id="extra-identity"),
    pytest.param({"kind": "access", "identities": {"email": "jane.doe@@example..com"}}, None, 422,
                 ["identities", "email"], id="bad-email"),
    pytest.param({"kind": "access", "identities": {}}, None, 422, ["identities"], id="no-identity"),
    pytest.param({"kind": "access"}, None, 422, ["identities"], id="identities-missing"),
    pytest.param(body(kind="telepathy"), None, 422, ["kind"], id="unknown-kind"),
    pytest.param(body(verified_by=""), None, 422, ["verified_by"], id="empty-verified-by"),
]


@pytest.mark.parametrize(("payload", "ctype", "status", "loc"), BAD_BODIES)
async def test_bad_input_is_a_problem_and_starts_nothing(idle_api, temporal_env, payload, ctype, status, loc):
    k = key()
    headers = {**auth("portal-acme"), "Idempotency-Key": k}
    if isinstance(payload, bytes):
        resp = await idle_api.post("/v1/requests", data=payload, headers={**headers, "Content-Type": ctype})
    else:
        resp = await idle_api.post("/v1/requests", json=payload, headers=headers)
    doc = await assert_problem(resp, status)
    text = await resp.text()
    for submitted in ("jane", "+1 555", "blue", "telepathy"):
        assert submitted not in text, text
    if loc is not None:
        assert loc in [e["loc"] for e in doc["errors"]], doc
        assert all({"pointer", "loc", "type", "detail"} <= set(e) for e in doc["errors"])
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))


async def test_unsupported_kind_is_422_and_starts_nothing(idle_api, temporal_env):
    k = key()
    resp = await idle_api.post("/v1/requests", json=body(kind="rectification"),
                               headers={**auth("portal-acme"), "Idempotency-Key": k})
    doc = await assert_problem(resp, 422)
    assert "not supported yet" in doc["detail"]
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))


async def test_tenant_rules_for_creation(idle_api, temporal_env):
    # Another tenant in the body: 403.
    k = key()
    resp = await idle_api.post("/v1/requests", json=body(tenant="globex"),
                               headers={**auth("portal-acme"), "Idempotency-Key": k})
    await assert_problem(resp, 403)
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "globex", k))

    # Its own tenant in the body: fine.
    resp = await idle_api.post("/v1/requests", json=body(tenant="acme"), headers=auth("portal-acme"))
    assert resp.status == 201

    # A token whose tenant is not configured: 422.
    k = key()
    resp = await idle_api.post("/v1/requests", json=body(), headers={**auth("portal-initech"), "Idempotency-Key": k})
    await assert_problem(resp, 422)
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "initech", k))


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status", "challenge"),
    [
        (None, 401, 'Bearer realm="dsr"'),
        ("Bearer not-a-configured-token", 401, 'Bearer realm="dsr", error="invalid_token"'),
        ("Basic dXNlcjpwYXNz", 401, 'Bearer realm="dsr", error="invalid_request"'),
        ("Bearer", 401, 'Bearer realm="dsr", error="invalid_request"'),
        ("Bearer tok-admin-acme-7c1f0e9a", 403, None),  # an admin does not create requests
    ],
    ids=["missing", "unknown", "basic", "empty", "wrong-role"],
)
async def test_creation_needs_a_portal_token(idle_api, temporal_env, authorization, status, challenge):
    k = key()
    headers = {"Idempotency-Key": k}
    if authorization:
        headers["Authorization"] = authorization
    resp = await idle_api.post("/v1/requests", json=body(), headers=headers)
    await assert_problem(resp, status)
    assert resp.headers.get("WWW-Authenticate") == challenge
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))


async def test_every_route_but_the_probes_needs_a_token(idle_api):
    for method, path in [("GET", "/v1/requests/req_aaaaaaaaaaaaaaaaaaaaaaaaaa"),
                         ("POST", "/v1/requests/req_aaaaaaaaaaaaaaaaaaaaaaaaaa/decision"),
                         ("GET", "/nowhere")]:
        resp = await idle_api.request(method, path)
        await assert_problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_probes(idle_api, idle_settings, temporal_env):
    resp = await idle_api.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    resp = await idle_api.get("/readyz")
    assert (resp.status, await resp.json()) == (200, {"status": "ready"})

    # A Temporal that cannot be reached: up, but not ready.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    unreachable = await Client.connect(dead, lazy=True, data_converter=temporal_env.client.data_converter)
    async with api_client(idle_settings, unreachable) as tc:
        assert (await tc.get("/healthz")).status == 200
        resp = await tc.get("/readyz")
        await assert_problem(resp, 503)


# --- HTTP errors and unexpected ones ------------------------------------------------------


async def test_unknown_route_and_method_are_problems(idle_api):
    doc = await assert_problem(await idle_api.get("/v1/jane.doe@example.com", headers=auth("portal-acme")), 404)
    assert "jane" not in str(doc)
    resp = await idle_api.delete("/v1/requests", headers=auth("portal-acme"))
    await assert_problem(resp, 405)
    assert resp.headers["Allow"] == "POST"


async def test_unknown_or_malformed_request_id_is_404(idle_api):
    malformed = ["jane.doe@example.com", "req_short", "REQ_AAAAAAAAAAAAAAAAAAAAAAAAAA", "req_" + "a" * 27]
    for request_id in ["req_aaaaaaaaaaaaaaaaaaaaaaaaaa", *malformed]:
        resp = await idle_api.get(f"/v1/requests/{request_id}", headers=auth("portal-acme"))
        doc = await assert_problem(resp, 404)
        assert "jane" not in str(doc)
        resp = await idle_api.post(f"/v1/requests/{request_id}/decision", json={"outcome": "approve"},
                                   headers=auth("admin-acme"))
        await assert_problem(resp, 404)


async def test_an_unexpected_error_is_a_bare_500(idle_settings, temporal_env):
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(f"cannot reach {EMAIL}")

    def add_route(app: web.Application) -> None:
        app.router.add_get("/v1/boom", boom)

    async with api_client(idle_settings, temporal_env.client, add_route) as tc:
        with capture_logs() as logs:
            resp = await tc.get("/v1/boom", headers=auth("portal-acme"))
        doc = await assert_problem(resp, 500)
    assert doc["type"] == "about:blank"
    text = await resp.text()
    assert "RuntimeError" not in text and "jane" not in text and "Traceback" not in text
    [error] = [e for e in logs if e["event"] == "api.unhandled_error"]
    assert error["error_type"] == "builtins.RuntimeError" and error["route"] == "/v1/boom"
    assert error["instance"] == doc["instance"]  # the occurrence the caller sees is the one logged
    assert "jane" not in str(logs)
    [access] = [e for e in logs if e["event"] == "api.request"]
    assert access["status"] == 500


# --- status and decisions (with a worker) --------------------------------------------------


async def _create(tc: Any, token: str = "portal-acme", kind: str = "access") -> str:
    resp = await tc.post("/v1/requests", json=body(kind=kind), headers=auth(token))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def test_status_is_the_workflows_and_only_for_its_tenant(live_api, temporal_env):
    request_id = await _create(live_api)
    handle = temporal_env.client.get_workflow_handle(request_id)
    queried = await wait_for_step(handle, Step.AWAITING_APPROVAL)

    for token in ("portal-acme", "admin-acme"):
        resp = await live_api.get(f"/v1/requests/{request_id}", headers=auth(token))
        assert resp.status == 200, await resp.text()
        assert RequestStatus.model_validate(await resp.json()) == queried

    # Another tenant's tokens learn nothing, not even that it exists.
    for token in ("portal-globex", "admin-globex"):
        resp = await live_api.get(f"/v1/requests/{request_id}", headers=auth(token))
        doc = await assert_problem(resp, 404)
        unknown = await live_api.get("/v1/requests/req_aaaaaaaaaaaaaaaaaaaaaaaaaa", headers=auth(token))
        assert doc["detail"] == (await unknown.json())["detail"]


async def test_approval_changes_the_workflow(live_api, temporal_env):
    request_id = await _create(live_api)
    handle = temporal_env.client.get_workflow_handle(request_id)
    await wait_for_step(handle, Step.AWAITING_APPROVAL)
    path = f"/v1/requests/{request_id}/decision"

    # Refused before reaching the workflow: wrong role, other tenant, bad bodies.
    await assert_problem(await live_api.post(path, json={"outcome": "approve"}, headers=auth("portal-acme")), 403)
    await assert_problem(await live_api.post(path, json={"outcome": "approve"}, headers=auth("admin-globex")), 404)
    bad = await live_api.post(path, data=b'{"outcome": ', headers={**auth("admin-acme"),
                                                                    "Content-Type": "application/json"})
    await assert_problem(bad, 400)
    resp = await live_api.post(path, json={"outcome": "maybe"}, headers=auth("admin-acme"))
    doc = await assert_problem(resp, 422)
    assert ["outcome"] in [e["loc"] for e in doc["errors"]] and "maybe" not in await resp.text()
    doc = await assert_problem(await live_api.post(path, json={"outcome": "reject"}, headers=auth("admin-acme")), 422)
    assert "reason" in doc["detail"]
    doc = await assert_problem(
        await live_api.post(path, json={"outcome": "approve", "actor": "someone"}, headers=auth("admin-acme")), 422)
    assert ["actor"] in [e["loc"] for e in doc["errors"]]

    status = await handle.query("status", result_type=RequestStatus)
    assert status.step == Step.AWAITING_APPROVAL and status.decision is None

    # The admin of the request's tenant approves.
    resp = await live_api.post(path, json={"outcome": "approve", "reason": "verified by phone"},
                               headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    recorded = RecordedDecision.model_validate(await resp.json())
    assert (recorded.actor, recorded.outcome, recorded.tenant) == ("admin-acme", "approve", "acme")

    # The workflow went on (and, with no system configured, failed).
    final = await wait_for_step(handle, Step.FAILED)
    assert final.decision == recorded
    assert final.outcome_reason and "no system is configured" in final.outcome_reason
    resp = await live_api.get(f"/v1/requests/{request_id}", headers=auth("portal-acme"))
    assert RequestStatus.model_validate(await resp.json()) == final

    # Sending the very same decision again answers the recorded one; any other decision is a conflict.
    resp = await live_api.post(path, json={"outcome": "approve", "reason": "verified by phone"},
                               headers=auth("admin-acme"))
    assert resp.status == 200
    assert RecordedDecision.model_validate(await resp.json()) == recorded
    resp = await live_api.post(path, json={"outcome": "reject", "reason": "changed my mind"},
                               headers=auth("admin-acme"))
    await assert_problem(resp, 409)


async def test_rejection_ends_the_request(live_api, temporal_env):
    request_id = await _create(live_api, kind="erasure")
    handle = temporal_env.client.get_workflow_handle(request_id)
    await wait_for_step(handle, Step.AWAITING_APPROVAL)
    resp = await live_api.post(f"/v1/requests/{request_id}/decision",
                               json={"outcome": "reject", "reason": "identity not verified"},
                               headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    final = await wait_for_step(handle, Step.REJECTED)
    assert final.outcome_reason == "identity not verified"
    result = await temporal_env.client.get_workflow_handle(request_id, result_type=RequestStatus).result()
    assert result == final
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    resp = await live_api.get(f"/v1/requests/{request_id}", headers=auth("admin-acme"))
    assert RequestStatus.model_validate(await resp.json()) == final


async def test_second_decision_while_running_is_refused_by_the_workflow(live_api, temporal_env):
    # globex needs approval for erasure; its systems listing blocks until released.
    gate = LIST_SYSTEMS_GATES["globex"] = asyncio.Event()
    try:
        request_id = await _create(live_api, token="portal-globex", kind="erasure")
        handle = temporal_env.client.get_workflow_handle(request_id)
        await wait_for_step(handle, Step.AWAITING_APPROVAL)
        path = f"/v1/requests/{request_id}/decision"
        # An admin of acme cannot decide it.
        await assert_problem(await live_api.post(path, json={"outcome": "approve"}, headers=auth("admin-acme")), 404)
        assert (await handle.query("status", result_type=RequestStatus)).decision is None

        resp = await live_api.post(path, json={"outcome": "approve"}, headers=auth("admin-globex"))
        assert resp.status == 200, await resp.text()
        await wait_for_step(handle, Step.LOCATING)

        resp = await live_api.post(path, json={"outcome": "reject", "reason": "too late"},
                                   headers=auth("admin-globex"))
        doc = await assert_problem(resp, 409)
        assert doc["detail"] == "already decided: approve"
        status = await handle.query("status", result_type=RequestStatus)
        assert status.decision is not None and status.decision.outcome == "approve"
    finally:
        gate.set()
        del LIST_SYSTEMS_GATES["globex"]
    await wait_for_step(handle, Step.FAILED)


async def test_no_approval_needed_and_replay_after_completion(live_api, temporal_env):
    # globex does not need approval for access: the request runs straight through.
    k = key()
    headers = {**auth("portal-globex"), "Idempotency-Key": k}
    first = await live_api.post("/v1/requests", json=body(), headers=headers)
    assert first.status == 201
    request_id = (await first.json())["id"]
    handle = temporal_env.client.get_workflow_handle(request_id)
    final = await wait_for_step(handle, Step.FAILED)
    await handle.result()

    # A decision on it is a conflict; replaying the creation answers the final status.
    resp = await live_api.post(f"/v1/requests/{request_id}/decision", json={"outcome": "approve"},
                               headers=auth("admin-globex"))
    await assert_problem(resp, 409)
    again = await live_api.post("/v1/requests", json=body(), headers=headers)
    assert again.status == 200
    assert RequestStatus.model_validate(await again.json()) == final


# --- the server -----------------------------------------------------------------------------


async def test_run_api_serves_until_stopped(idle_settings: Settings, temporal_env: WorkflowEnvironment):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = idle_settings.model_copy(update={"api": idle_settings.api.model_copy(update={"port": port})})
    stop = asyncio.Event()
    task = asyncio.create_task(run_api(settings, temporal_env.client, stop))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"{url}/healthz") as resp:
                    assert resp.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the API did not start")
        async with session.get(f"{url}/v1/requests/x", headers=auth("portal-acme")) as resp:
            assert resp.status == 404 and resp.content_type == PROBLEM_JSON
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{url}/healthz"):
                pass


def test_create_app_stores_settings_and_client(idle_settings, temporal_env):
    from api.app import CLIENT, SETTINGS

    app = create_app(idle_settings, temporal_env.client)
    assert app[SETTINGS] is idle_settings and app[CLIENT] is temporal_env.client
