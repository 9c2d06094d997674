"""The signed-webhook callback route and the manual-task confirmation route, against the dev server with a
running PartnerWaitWorkflow (and, for confirmations, a stand-in request workflow that owns the tenant)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.requests_routes import WORKFLOW_TYPE
from connectors.contract import ExternalWait, VerificationOutcome
from tests.api.support import api_client, assert_problem, auth, make_settings
from tests.connectors.webhook_partner import SECRET, WebhookPartner
from workers.config import SystemSettings
from workflows.messages import Notification, NotificationResult
from workflows.partner import PartnerWaitWorkflow
from workflows.tasks import AuditEvent, PartnerWaitInput, SystemTask, partner_workflow_id

WEBHOOK = "mailer"
MANUAL = "print_shop"
EVENTS: list[AuditEvent] = []


@activity.defn(name="dsr.verify_erasure")
async def verify_stub(task: SystemTask) -> VerificationOutcome:
    return VerificationOutcome(remaining={"partner": 1})


@activity.defn(name="dsr.notify")
async def notify_stub(note: Notification) -> NotificationResult:
    return NotificationResult(sent=True)


@activity.defn(name="dsr.record_event")
async def record_stub(event: AuditEvent) -> None:
    EVENTS.append(event)


@workflow.defn(name=WORKFLOW_TYPE, sandboxed=False)
class StandInRequest:
    """Owns a request id for a tenant (through the memo), as the real request workflow does."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


def request_id() -> str:
    return "req_" + base64.b32encode(os.urandom(20)).decode().lower()[:26]


@pytest.fixture(scope="module")
async def setup(temporal_env: WorkflowEnvironment, tmp_path_factory):
    queue = f"partner-routes-{uuid.uuid4().hex}"
    settings = make_settings(queue, tmp_path_factory.mktemp("dsr-partner-routes"))
    settings.systems = {
        WEBHOOK: SystemSettings(type="partner_webhook", url="https://mailer.example/dsr", secret=SECRET,
                                callback_base="https://dsr.example.com/v1/callbacks/webhook"),
        MANUAL: SystemSettings(type="manual_task", instructions="Delete the customer by hand."),
        "appdb": SystemSettings(type="postgres"),
    }
    async with Worker(temporal_env.client, task_queue=queue, workflows=[PartnerWaitWorkflow, StandInRequest],
                      activities=[verify_stub, notify_stub, record_stub]):
        yield settings


@pytest.fixture
async def api(setup, temporal_env):
    async with api_client(setup, temporal_env.client) as tc:
        yield tc


async def _wait(setup, temporal_env, system: str, reference: str | None = None,
                rid: str | None = None) -> tuple[str, WorkflowHandle]:
    rid = rid or request_id()
    data = PartnerWaitInput(request_id=rid, tenant="acme", system=system, identities={"email": "jane@example.com"},
                            external=ExternalWait(reference=reference or rid, poll_every_seconds=86400))
    handle = await temporal_env.client.start_workflow(
        PartnerWaitWorkflow.run, data, id=partner_workflow_id(rid, system), task_queue=setup.temporal.task_queue)
    for _ in range(100):
        if await handle.query(PartnerWaitWorkflow.progress) is not None:
            break
        await asyncio.sleep(0.05)
    return rid, handle


def _hook(rid: str, system: str = WEBHOOK) -> str:
    return f"/v1/callbacks/webhook/{rid}/{system}"


# --- webhook callbacks ----------------------------------------------------------------------------


async def test_a_signed_webhook_callback_completes_the_wait(api, setup, temporal_env):
    partner = WebhookPartner()
    rid, handle = await _wait(setup, temporal_env, WEBHOOK)
    body, headers = partner.callback(rid, "in_progress")
    resp = await api.post(_hook(rid), data=body, headers=headers)  # no bearer token: the signature is it
    assert resp.status == 200, await resp.text()
    assert (await handle.query(PartnerWaitWorkflow.progress)).status == "in_progress"
    body, headers = partner.callback(rid, "completed")
    resp = await api.post(_hook(rid), data=body, headers=headers)
    assert resp.status == 200 and (await resp.json())["accepted"] is True
    assert (await asyncio.wait_for(handle.result(), 20)).ok
    # the very same callback again: a replay, refused
    await assert_problem(await api.post(_hook(rid), data=body, headers=headers), 403)


@pytest.mark.parametrize("case", ["forged", "tampered", "stale", "unsigned", "another-request", "replayed"])
async def test_bad_webhook_callbacks_are_refused(api, setup, temporal_env, case):
    partner = WebhookPartner()
    rid, handle = await _wait(setup, temporal_env, WEBHOOK)
    body, headers = partner.callback(rid, "completed")
    path = _hook(rid)
    if case == "forged":
        body, headers = partner.callback(rid, secret="an-attackers-guess")
    elif case == "tampered":
        body = body.replace(b"completed", b"cancelled")
    elif case == "stale":
        body, headers = partner.callback(rid, timestamp=int(time.time()) - 600)
    elif case == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif case == "another-request":  # a genuine callback of one request sent to another's URL
        other, handle = await _wait(setup, temporal_env, WEBHOOK)
        path = _hook(other)
    elif case == "replayed":  # an in-progress callback accepted, then sent again
        body, headers = partner.callback(rid, "in_progress")
        assert (await api.post(path, data=body, headers=headers)).status == 200
    resp = await api.post(path, data=body, headers=headers)
    doc = await assert_problem(resp, 403)
    assert "jane" not in json.dumps(doc)
    progress = await handle.query(PartnerWaitWorkflow.progress)
    assert progress.callbacks == (1 if case == "replayed" else 0)
    assert progress.completed_at is None
    await handle.terminate("test over")


async def test_malformed_and_unknown_webhook_callbacks(api, setup, temporal_env):
    partner = WebhookPartner()
    rid, handle = await _wait(setup, temporal_env, WEBHOOK)
    body, headers = partner.callback(rid, "exploded")
    await assert_problem(await api.post(_hook(rid), data=body, headers=headers), 400)
    body, headers = partner.callback(rid)
    await assert_problem(await api.post(_hook(rid, "nosuch"), data=body, headers=headers), 404)
    await assert_problem(await api.post(_hook(rid, "appdb"), data=body, headers=headers), 404)
    nowait = request_id()
    body, headers = partner.callback(nowait)
    await assert_problem(await api.post(_hook(nowait), data=body, headers=headers), 404)
    assert (await handle.query(PartnerWaitWorkflow.progress)).callbacks == 0
    await handle.terminate("test over")


# --- manual confirmation ----------------------------------------------------------------------------


async def _request(setup, temporal_env, tenant: str = "acme") -> str:
    rid = request_id()
    await temporal_env.client.start_workflow(StandInRequest.run, id=rid, task_queue=setup.temporal.task_queue,
                                             memo={"tenant": tenant})
    return rid


def _confirm(rid: str, system: str = MANUAL) -> str:
    return f"/v1/requests/{rid}/tasks/{system}/confirmation"


async def test_an_admin_confirms_a_manual_task_and_it_is_recorded(api, setup, temporal_env):
    rid = await _request(setup, temporal_env)
    _, handle = await _wait(setup, temporal_env, MANUAL, reference="manual", rid=rid)
    resp = await api.post(_confirm(rid), json={"note": "done in the print shop's console"},
                          headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] is True
    assert (await asyncio.wait_for(handle.result(), 20)).ok
    progress = await handle.query(PartnerWaitWorkflow.progress)
    assert progress.completed_by == "admin-acme" and progress.completed_at is not None
    [event] = [e for e in EVENTS if e.request_id == rid]
    assert (event.event, event.system, event.actor) == ("confirmed", MANUAL, "admin-acme")
    assert "print shop" not in json.dumps(event.model_dump(mode="json"))  # the note is not stored
    # confirming again changes nothing
    resp = await api.post(_confirm(rid), json={}, headers=auth("admin-acme"))
    assert resp.status == 200 and (await resp.json())["accepted"] is False


async def test_confirmation_refusals(api, setup, temporal_env):
    rid = await _request(setup, temporal_env)
    _, handle = await _wait(setup, temporal_env, MANUAL, reference="manual", rid=rid)
    await assert_problem(await api.post(_confirm(rid), json={}, headers=auth("portal-acme")), 403)
    await assert_problem(await api.post(_confirm(rid), json={}, headers=auth("admin-globex")), 404)  # not theirs
    await assert_problem(await api.post(_confirm(rid, WEBHOOK), json={}, headers=auth("admin-acme")), 404)
    await assert_problem(await api.post(_confirm(rid, "nosuch"), json={}, headers=auth("admin-acme")), 404)
    await assert_problem(await api.post(_confirm(rid), json={"who": "me"}, headers=auth("admin-acme")), 422)
    await assert_problem(await api.post(_confirm(request_id()), json={}, headers=auth("admin-acme")), 404)
    other = await _request(setup, temporal_env)  # a request without a manual wait
    await assert_problem(await api.post(_confirm(other), json={}, headers=auth("admin-acme")), 404)
    progress = await handle.query(PartnerWaitWorkflow.progress)
    assert progress.callbacks == 0 and progress.completed_by is None
    await handle.terminate("test over")
