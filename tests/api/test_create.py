"""Creating a request: what the API answers, and what it started (or did not) in Temporal."""

from __future__ import annotations

import re

import pytest
from structlog.testing import capture_logs
from temporalio.client import WorkflowExecutionStatus

from tests.api.support import (
    EMAIL,
    assert_problem,
    auth,
    body,
    expected_id,
    key,
    workflow_exists,
)
from workers.codec import ENCODING
from workflows.models import DsrRequest, RequestStatus, Step

# --- creation ------------------------------------------------------------------------------


async def test_create_starts_the_workflow_without_personal_data_in_clear(idle_api, idle_settings, temporal_env):
    client = temporal_env.client
    with capture_logs() as logs:
        resp = await idle_api.post("/v1/requests", json=body(verified_by="portal-login"), headers=auth("portal-acme"))
    assert resp.status == 201, await resp.text()
    status = RequestStatus.model_validate(await resp.json())
    assert re.fullmatch(r"req_[a-z2-7]{26}", status.id)
    assert resp.headers["Location"] == f"/v1/requests/{status.id}"
    assert (status.tenant, status.kind, status.step) == ("acme", "access", Step.RECEIVED)
    assert status.due_at > status.received_at

    desc = await client.get_workflow_handle(status.id).describe()
    assert desc.workflow_type == "DataSubjectRequestWorkflow"
    assert desc.task_queue == idle_settings.temporal.task_queue
    assert desc.status == WorkflowExecutionStatus.RUNNING
    memo = await desc.memo()
    assert memo["tenant"] == "acme" and memo["kind"] == "access"
    assert len(memo["fingerprint"]) == 64 and len(memo["content"]) == 64
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
    assert request.identity_verified is True and request.subject_key is not None

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

