"""Status and the approval decision, against the real request workflow (stub activities)."""

from __future__ import annotations

import asyncio

from temporalio.client import WorkflowExecutionStatus

from tests.api.support import (
    LIST_SYSTEMS_GATES,
    assert_problem,
    auth,
    body,
    create,
    key,
    wait_for_step,
)
from workflows.models import RequestStatus, Step
from workflows.updates import RecordedDecision


async def test_status_is_the_workflows_and_only_for_its_tenant(live_api, temporal_env):
    request_id = await create(live_api)
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
    request_id = await create(live_api)
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
    request_id = await create(live_api, kind="erasure")
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
        request_id = await create(live_api, token="portal-globex", kind="erasure")
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

