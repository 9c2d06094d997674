"""Disputes: opening starts the dispute workflow (sealed, tenant-scoped, idempotent); status; resolution."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs
from temporalio.client import WorkflowExecutionStatus

from api.ids import DISPUTE_ID_PATTERN
from tests.api.support import (
    ACME_POLICY,
    EMAIL,
    assert_problem,
    auth,
    create,
    dispute_body,
    expected_dispute_id,
    key,
    started_input,
    wait_for_step,
    workflow_exists,
)
from workers.codec import ENCODING
from workflows.messages import DISPUTE_WORKFLOW, DisputeInput, DisputeStatus, DisputeStep
from workflows.models import DsrRequest, RequestKind, RequestStatus, Step


async def test_open_starts_the_dispute_workflow_sealed(idle_api, idle_settings, temporal_env):
    client = temporal_env.client
    with capture_logs() as logs:
        resp = await idle_api.post("/v1/disputes", json=dispute_body(requested_kind="restriction"),
                                   headers=auth("admin-acme"))
    assert resp.status == 201, await resp.text()
    status = DisputeStatus.model_validate(await resp.json())
    assert DISPUTE_ID_PATTERN.fullmatch(status.id)
    assert resp.headers["Location"] == f"/v1/disputes/{status.id}"
    assert (status.tenant, status.step, status.resolution) == ("acme", DisputeStep.RESTRICTING, None)

    desc = await client.get_workflow_handle(status.id).describe()
    assert desc.workflow_type == DISPUTE_WORKFLOW == "DisputeWorkflow"
    assert desc.task_queue == idle_settings.temporal.task_queue
    assert desc.status == WorkflowExecutionStatus.RUNNING
    memo = await desc.memo()
    assert memo["tenant"] == "acme" and len(memo["fingerprint"]) == 64 and EMAIL not in str(memo)

    dispute = await started_input(client, status.id, DisputeInput)  # sealed by the codec
    assert dispute.id == status.id and dispute.tenant == "acme"
    assert dispute.identities.as_dict() == {"email": EMAIL}
    assert dispute.opened_by == "admin-acme" and dispute.opened_at == status.opened_at
    assert dispute.requested_kind == RequestKind.RESTRICTION
    assert dispute.notice_days == ACME_POLICY.dispute_notice_days == 21
    assert dispute.grounds == dispute_body()["grounds"]
    async for event in client.get_workflow_handle(status.id).fetch_history_events():
        for field in event.workflow_execution_started_event_attributes.memo.fields.values():
            assert field.metadata["encoding"] == ENCODING
        break

    # The subject key is the one a request for the same subject carries, so the two can meet.
    request_id = await create(idle_api, identities={"email": EMAIL.upper()}, kind="erasure")
    request = await started_input(client, request_id, DsrRequest)
    assert dispute.subject_key == request.subject_key

    [entry] = [e for e in logs if e["event"] == "api.request"]
    assert (entry["route"], entry["status"], entry["request_id"]) == ("/v1/disputes", 201, status.id)
    assert EMAIL not in str(logs) and "accuracy" not in str(logs)


async def test_open_defaults_to_erasure_and_is_tenant_scoped(idle_api, temporal_env):
    resp = await idle_api.post("/v1/disputes", json=dispute_body(), headers=auth("admin-globex"))
    assert resp.status == 201, await resp.text()
    dispute_id = (await resp.json())["id"]
    dispute = await started_input(temporal_env.client, dispute_id, DisputeInput)
    assert (dispute.tenant, dispute.requested_kind, dispute.notice_days) == ("globex", RequestKind.ERASURE, 14)

    # With no worker yet, its status is the initial one, for its own tenant's admins only.
    resp = await idle_api.get(f"/v1/disputes/{dispute_id}", headers=auth("admin-globex"))
    assert resp.status == 200, await resp.text()
    assert DisputeStatus.model_validate(await resp.json()) == DisputeStatus(
        id=dispute_id, tenant="globex", step=DisputeStep.RESTRICTING, opened_at=dispute.opened_at)
    doc = await assert_problem(await idle_api.get(f"/v1/disputes/{dispute_id}", headers=auth("admin-acme")), 404)
    assert doc["detail"] == "no such dispute"
    await assert_problem(await idle_api.get(f"/v1/disputes/{dispute_id}", headers=auth("portal-globex")), 403)
    # Nor is a dispute reachable as a request.
    await assert_problem(await idle_api.get(f"/v1/requests/{dispute_id}", headers=auth("admin-globex")), 404)


async def test_open_is_idempotent(idle_api, temporal_env):
    k = key()
    headers = {**auth("admin-acme"), "Idempotency-Key": k}
    first = await idle_api.post("/v1/disputes", json=dispute_body(), headers=headers)
    assert first.status == 201
    created = await first.json()
    assert created["id"] == expected_dispute_id(idle_api, "acme", k)

    again = await idle_api.post("/v1/disputes", json=dispute_body(identities={"email": EMAIL.upper()}),
                                headers=headers)
    assert again.status == 200, await again.text()
    assert await again.json() == created and again.headers["Location"] == f"/v1/disputes/{created['id']}"

    for changed in (dispute_body(grounds="something else"), dispute_body(requested_kind="restriction"),
                    dispute_body(identities={"email": "someone.else@example.com"})):
        doc = await assert_problem(await idle_api.post("/v1/disputes", json=changed, headers=headers), 422)
        assert doc["detail"] == "Idempotency-Key reused with a different request"

    other = await idle_api.post("/v1/disputes", json=dispute_body(), headers={**auth("admin-globex"),
                                                                           "Idempotency-Key": k})
    assert other.status == 201 and (await other.json())["id"] != created["id"]


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        (dispute_body(grounds=""), ["grounds"]),
        (dispute_body(grounds="   "), ["grounds"]),
        (dispute_body(requested_kind="telepathy"), ["requested_kind"]),
        (dispute_body(tenant="globex"), ["tenant"]),
        (dispute_body(identities={"email": EMAIL, "phone": "+1 555 0100"}), ["identities", "phone"]),
        ({"identities": {"email": EMAIL}}, ["grounds"]),
        (dispute_body(identities={}), ["identities"]),
        (dispute_body(details={"corrections": {"name": "Jane Roe"}}), ["details", "corrections"]),
        (dispute_body(details={"color": "blue"}), ["details", "color"]),
    ],
    ids=["empty-grounds", "blank-grounds", "unknown-kind", "tenant", "extra-identity", "no-grounds", "no-identity",
         "bad-correction", "extra-detail"],
)
async def test_bad_dispute_bodies_start_nothing(idle_api, temporal_env, payload, loc):
    k = key()
    resp = await idle_api.post("/v1/disputes", json=payload, headers={**auth("admin-acme"), "Idempotency-Key": k})
    doc = await assert_problem(resp, 422)
    assert loc in [e["loc"] for e in doc["errors"]], doc
    text = await resp.text()
    assert "jane" not in text and "telepathy" not in text and "+1 555" not in text and "Jane Roe" not in text
    assert not await workflow_exists(temporal_env.client, expected_dispute_id(idle_api, "acme", k))


async def test_details_must_fit_the_requested_kind(idle_api, temporal_env):
    # What the subject asked for must be startable should they prevail: checked when the dispute opens.
    for requested, details, named in [("rectification", {}, "corrections"), ("objection", {}, "purpose"),
                                      ("opt_out", {"purpose": "profiling"}, "marketing")]:
        k = key()
        resp = await idle_api.post("/v1/disputes", json=dispute_body(requested_kind=requested, details=details),
                                   headers={**auth("admin-acme"), "Idempotency-Key": k})
        doc = await assert_problem(resp, 422)
        assert named in doc["detail"] and "profiling" not in doc["detail"]
        assert not await workflow_exists(temporal_env.client, expected_dispute_id(idle_api, "acme", k))

    details = {"corrections": {"user.name": "Jane Roe"}}
    resp = await idle_api.post("/v1/disputes", json=dispute_body(requested_kind="rectification", details=details),
                               headers=auth("admin-acme"))
    assert resp.status == 201, await resp.text()
    dispute = await started_input(temporal_env.client, (await resp.json())["id"], DisputeInput)
    assert dispute.requested_kind == RequestKind.RECTIFICATION
    assert dispute.details.corrections == {"user.name": "Jane Roe"}


async def test_open_refused_for_an_unconfigured_tenant_or_no_token(idle_api, idle_settings, temporal_env):
    k = key()
    resp = await idle_api.post("/v1/disputes", json=dispute_body(), headers={"Idempotency-Key": k})
    await assert_problem(resp, 401)
    resp = await idle_api.post("/v1/disputes", json=dispute_body(),
                               headers={**auth("portal-acme"), "Idempotency-Key": k})
    await assert_problem(resp, 403)
    assert not await workflow_exists(temporal_env.client, expected_dispute_id(idle_api, "acme", k))


async def test_resolution_changes_the_workflow(live_api, temporal_env):
    resp = await live_api.post("/v1/disputes", json=dispute_body(), headers=auth("admin-acme"))
    assert resp.status == 201, await resp.text()
    dispute_id = (await resp.json())["id"]
    handle = temporal_env.client.get_workflow_handle(dispute_id, result_type=DisputeStatus)
    queried = await wait_for_step(handle, DisputeStep.RESTRICTED, status_type=DisputeStatus)

    resp = await live_api.get(f"/v1/disputes/{dispute_id}", headers=auth("admin-acme"))
    assert resp.status == 200 and DisputeStatus.model_validate(await resp.json()) == queried
    await assert_problem(await live_api.get(f"/v1/disputes/{dispute_id}", headers=auth("admin-globex")), 404)

    path = f"/v1/disputes/{dispute_id}/resolution"
    valid = {"outcome": "company_prevails", "reason": "the data was shown to be accurate"}
    await assert_problem(await live_api.post(path, json=valid, headers=auth("portal-acme")), 403)
    await assert_problem(await live_api.post(path, json=valid, headers=auth("admin-globex")), 404)
    for bad, loc in [({**valid, "outcome": "draw"}, ["outcome"]), ({"outcome": "company_prevails"}, ["reason"]),
                     ({**valid, "reason": " "}, ["reason"]), ({**valid, "actor": "x"}, ["actor"])]:
        doc = await assert_problem(await live_api.post(path, json=bad, headers=auth("admin-acme")), 422)
        assert loc in [e["loc"] for e in doc["errors"]]
    assert (await handle.query("status", result_type=DisputeStatus)).resolution is None

    resp = await live_api.post(path, json=valid, headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    answered = DisputeStatus.model_validate(await resp.json())
    assert answered.resolution is not None and answered.resolved_at is not None
    assert (answered.resolution.actor, answered.resolution.outcome, answered.resolution.tenant) == (
        "admin-acme", "company_prevails", "acme")
    # The company prevails: the subject is told, and the restriction stays for the notice period (21 days).
    status = await wait_for_step(handle, DisputeStep.NOTICE_PERIOD, status_type=DisputeStatus)
    assert status.resolution == answered.resolution and status.lifted_at is None
    resp = await live_api.get(f"/v1/disputes/{dispute_id}", headers=auth("admin-acme"))
    assert DisputeStatus.model_validate(await resp.json()) == status

    # Another resolution is refused by the workflow, and the first one stands.
    resp = await live_api.post(path, json={"outcome": "subject_prevails", "reason": "changed my mind"},
                               headers=auth("admin-acme"))
    doc = await assert_problem(resp, 409)
    assert doc["type"].endswith("/resolution-refused")
    assert (await handle.query("status", result_type=DisputeStatus)).resolution == status.resolution


async def test_subject_prevails_and_the_follow_up_request_is_readable(live_api, temporal_env):
    resp = await live_api.post("/v1/disputes", json=dispute_body(), headers=auth("admin-globex"))
    assert resp.status == 201, await resp.text()
    dispute_id = (await resp.json())["id"]
    handle = temporal_env.client.get_workflow_handle(dispute_id, result_type=DisputeStatus)
    await wait_for_step(handle, DisputeStep.RESTRICTED, status_type=DisputeStatus)

    resp = await live_api.post(f"/v1/disputes/{dispute_id}/resolution",
                               json={"outcome": "subject_prevails", "reason": "the data was inaccurate"},
                               headers=auth("admin-globex"))
    assert resp.status == 200, await resp.text()
    final = await handle.result()  # with no system configured, the follow-up erasure fails
    assert final.step == DisputeStep.CLOSED and final.follow_up_request_id
    assert "follow_up" in final.failed

    # The erasure the subject asked for is a request of the dispute's tenant, readable through the API.
    path = f"/v1/requests/{final.follow_up_request_id}"
    resp = await live_api.get(path, headers=auth("admin-globex"))
    assert resp.status == 200, await resp.text()
    follow_up = RequestStatus.model_validate(await resp.json())
    assert (follow_up.id, follow_up.tenant, follow_up.kind) == (final.follow_up_request_id, "globex", "erasure")
    assert follow_up.step == Step.FAILED
    await assert_problem(await live_api.get(path, headers=auth("admin-acme")), 404)
    resp = await live_api.get(f"/v1/disputes/{dispute_id}", headers=auth("admin-globex"))
    assert DisputeStatus.model_validate(await resp.json()) == final

    # It is listed like a request the portal started: by tenant, kind and status (search attributes).
    async def listed() -> list[dict]:
        resp = await live_api.get("/v1/requests", params={"kind": "erasure", "status": "failed"},
                                  headers=auth("admin-globex"))
        assert resp.status == 200, await resp.text()
        return [r for r in (await resp.json())["requests"] if r["id"] == final.follow_up_request_id]

    for _ in range(100):  # visibility catches up
        if entries := await listed():
            break
        await asyncio.sleep(0.1)
    assert [(e["tenant"], e["kind"], e["step"]) for e in entries] == [("globex", "erasure", "failed")]
    resp = await live_api.get("/v1/requests", params={"kind": "erasure"}, headers=auth("admin-acme"))
    assert final.follow_up_request_id not in {r["id"] for r in (await resp.json())["requests"]}
