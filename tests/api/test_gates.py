"""Verification, extension, cancellation and objection routes, against the real request workflow (stub activities)."""

from __future__ import annotations

import asyncio

from temporalio.client import WorkflowExecutionStatus

from tests.api.support import LIST_SYSTEMS_GATES, assert_problem, auth, create, wait_for_step
from workflows.models import RequestStatus, Step
from workflows.updates import RecordedAdminObjection, RecordedCancellation, RecordedExtension, RecordedVerification


async def test_verification_opens_the_identity_gate(live_api, temporal_env):
    request_id = await create(live_api, verified=False)
    handle = temporal_env.client.get_workflow_handle(request_id)
    await wait_for_step(handle, Step.AWAITING_VERIFICATION)
    path = f"/v1/requests/{request_id}/verification"

    # Refused before reaching the workflow: another tenant's tokens, bad bodies.
    for token in ("portal-globex", "admin-globex"):
        await assert_problem(await live_api.post(path, json={"method": "email-link"}, headers=auth(token)), 404)
    for bad, loc in [({"method": " "}, ["method"]), ({}, ["method"]),
                     ({"method": "email-link", "actor": "x"}, ["actor"])]:
        doc = await assert_problem(await live_api.post(path, json=bad, headers=auth("portal-acme")), 422)
        assert loc in [e["loc"] for e in doc["errors"]]
    status = await handle.query("status", result_type=RequestStatus)
    assert status.step == Step.AWAITING_VERIFICATION and status.verification is None

    # The portal of the request's tenant verifies it: the workflow goes on to the approval gate.
    resp = await live_api.post(path, json={"method": "email-link"}, headers=auth("portal-acme"))
    assert resp.status == 200, await resp.text()
    recorded = RecordedVerification.model_validate(await resp.json())
    assert (recorded.actor, recorded.method) == ("portal-acme", "email-link")
    status = await wait_for_step(handle, Step.AWAITING_APPROVAL)
    assert status.verification == recorded and status.verified_at == recorded.verified_at

    # The same verification again is answered; another one is refused by the workflow.
    again = await live_api.post(path, json={"method": "email-link"}, headers=auth("portal-acme"))
    assert again.status == 200 and RecordedVerification.model_validate(await again.json()) == recorded
    doc = await assert_problem(await live_api.post(path, json={"method": "id-document"}, headers=auth("admin-acme")),
                               409)
    assert doc["detail"] == "identity is already verified"


async def test_verification_of_a_verified_request_is_refused(live_api, temporal_env):
    request_id = await create(live_api)
    await wait_for_step(temporal_env.client.get_workflow_handle(request_id), Step.AWAITING_APPROVAL)
    resp = await live_api.post(f"/v1/requests/{request_id}/verification", json={"method": "email-link"},
                               headers=auth("admin-acme"))
    doc = await assert_problem(resp, 409)
    assert doc["detail"] == "identity is already verified"
    assert doc["type"].endswith("/verification-refused")


async def test_extension_moves_the_due_date_once(live_api, temporal_env):
    request_id = await create(live_api)
    handle = temporal_env.client.get_workflow_handle(request_id)
    before = await wait_for_step(handle, Step.AWAITING_APPROVAL)
    path = f"/v1/requests/{request_id}/extension"
    valid = {"months": 2, "reason": "twelve systems to search"}

    await assert_problem(await live_api.post(path, json=valid, headers=auth("portal-acme")), 403)
    await assert_problem(await live_api.post(path, json=valid, headers=auth("admin-globex")), 404)
    for bad, loc in [({"months": 3, "reason": "x"}, ["months"]), ({"months": 0, "reason": "x"}, ["months"]),
                     ({"months": 1, "reason": "  "}, ["reason"]), ({"months": 1}, ["reason"]),
                     ({**valid, "tenant": "globex"}, ["tenant"])]:
        doc = await assert_problem(await live_api.post(path, json=bad, headers=auth("admin-acme")), 422)
        assert loc in [e["loc"] for e in doc["errors"]], doc
    assert (await handle.query("status", result_type=RequestStatus)).extension is None

    resp = await live_api.post(path, json=valid, headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    recorded = RecordedExtension.model_validate(await resp.json())
    assert (recorded.actor, recorded.tenant, recorded.months) == ("admin-acme", "acme", 2)
    assert recorded.original_due_at == before.due_at and recorded.new_due_at > before.due_at
    status = await handle.query("status", result_type=RequestStatus)
    assert status.extension == recorded and status.due_at == recorded.new_due_at
    resp = await live_api.get(f"/v1/requests/{request_id}", headers=auth("portal-acme"))
    assert RequestStatus.model_validate(await resp.json()).due_at == recorded.new_due_at

    # Resending it answers the recorded extension; a second one is refused (GDPR Art. 12(3)).
    again = await live_api.post(path, json=valid, headers=auth("admin-acme"))
    assert again.status == 200 and RecordedExtension.model_validate(await again.json()) == recorded
    doc = await assert_problem(await live_api.post(path, json={"months": 1, "reason": "more"},
                                                   headers=auth("admin-acme")), 409)
    assert "already extended once" in doc["detail"]
    assert (await handle.query("status", result_type=RequestStatus)).due_at == recorded.new_due_at


async def test_cancellation_by_the_portal_ends_the_request(live_api, temporal_env):
    request_id = await create(live_api)
    handle = temporal_env.client.get_workflow_handle(request_id)
    await wait_for_step(handle, Step.AWAITING_APPROVAL)
    path = f"/v1/requests/{request_id}/cancellation"

    await assert_problem(await live_api.post(path, json={}, headers=auth("portal-globex")), 404)
    doc = await assert_problem(await live_api.post(path, json={"reason": "x" * 2001}, headers=auth("portal-acme")),
                               422)
    assert ["reason"] in [e["loc"] for e in doc["errors"]]
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    resp = await live_api.post(path, json={"reason": "sent by mistake"}, headers=auth("portal-acme"))
    assert resp.status == 200, await resp.text()
    recorded = RecordedCancellation.model_validate(await resp.json())
    assert (recorded.actor, recorded.reason) == ("portal-acme", "sent by mistake")
    final = await temporal_env.client.get_workflow_handle(request_id, result_type=RequestStatus).result()
    assert final.step == Step.CANCELLED and final.cancellation == recorded
    resp = await live_api.get(f"/v1/requests/{request_id}", headers=auth("portal-acme"))
    assert RequestStatus.model_validate(await resp.json()) == final

    # The same cancellation again is answered; anything else on the finished request is a conflict.
    again = await live_api.post(path, json={"reason": "sent by mistake"}, headers=auth("portal-acme"))
    assert again.status == 200 and RecordedCancellation.model_validate(await again.json()) == recorded
    await assert_problem(await live_api.post(path, json={}, headers=auth("admin-acme")), 409)
    await assert_problem(await live_api.post(f"/v1/requests/{request_id}/decision", json={"outcome": "approve"},
                                             headers=auth("admin-acme")), 409)


async def test_cancellation_by_an_admin_while_unverified(live_api, temporal_env):
    request_id = await create(live_api, verified=False)
    handle = temporal_env.client.get_workflow_handle(request_id, result_type=RequestStatus)
    await wait_for_step(handle, Step.AWAITING_VERIFICATION)
    resp = await live_api.post(f"/v1/requests/{request_id}/cancellation", json={}, headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    assert RecordedCancellation.model_validate(await resp.json()).actor == "admin-acme"
    final = await handle.result()
    assert final.step == Step.CANCELLED and final.verification is None


async def test_cancellation_after_execution_started_is_refused(live_api, temporal_env):
    # globex runs an access request without approval; its systems listing blocks until released.
    gate = LIST_SYSTEMS_GATES["globex"] = asyncio.Event()
    try:
        request_id = await create(live_api, token="portal-globex")
        handle = temporal_env.client.get_workflow_handle(request_id)
        await wait_for_step(handle, Step.LOCATING)
        resp = await live_api.post(f"/v1/requests/{request_id}/cancellation", json={"reason": "too late"},
                                   headers=auth("portal-globex"))
        doc = await assert_problem(resp, 409)
        assert "execution has started" in doc["detail"]
        assert doc["type"].endswith("/cancellation-refused")
        assert (await handle.query("status", result_type=RequestStatus)).cancellation is None
    finally:
        gate.set()
        del LIST_SYSTEMS_GATES["globex"]
    final = await wait_for_step(handle, Step.FAILED)
    assert final.cancellation is None


async def test_objection_to_a_restriction_rejects_it(live_api, temporal_env):
    # globex accounts are organisation-managed: a restriction waits out the administrator's objection window.
    request_id = await create(live_api, token="portal-globex", kind="restriction")
    handle = temporal_env.client.get_workflow_handle(request_id, result_type=RequestStatus)
    await wait_for_step(handle, Step.OBJECTION_WINDOW)
    path = f"/v1/requests/{request_id}/objection"

    await assert_problem(await live_api.post(path, json={"reason": "legal hold"}, headers=auth("portal-globex")), 403)
    await assert_problem(await live_api.post(path, json={"reason": "legal hold"}, headers=auth("admin-acme")), 404)
    for bad in ({}, {"reason": " "}, {"reason": "legal hold", "actor": "someone"}):
        await assert_problem(await live_api.post(path, json=bad, headers=auth("admin-globex")), 422)
    assert (await handle.query("status", result_type=RequestStatus)).objection is None

    resp = await live_api.post(path, json={"reason": "legal hold on this account"}, headers=auth("admin-globex"))
    assert resp.status == 200, await resp.text()
    recorded = RecordedAdminObjection.model_validate(await resp.json())
    assert (recorded.actor, recorded.tenant, recorded.reason) == ("admin-globex", "globex",
                                                                  "legal hold on this account")
    final = await handle.result()
    assert final.step == Step.REJECTED and final.objection == recorded
    assert final.outcome_reason and "legal hold on this account" in final.outcome_reason


async def test_objection_outside_a_restriction_is_refused(live_api, temporal_env):
    request_id = await create(live_api)
    handle = temporal_env.client.get_workflow_handle(request_id)
    await wait_for_step(handle, Step.AWAITING_APPROVAL)
    resp = await live_api.post(f"/v1/requests/{request_id}/objection", json={"reason": "no"},
                               headers=auth("admin-acme"))
    doc = await assert_problem(resp, 409)
    assert doc["detail"] == "only a restriction of an organisation-managed account can be objected to"
    status = await handle.query("status", result_type=RequestStatus)
    assert status.step == Step.AWAITING_APPROVAL and status.objection is None
