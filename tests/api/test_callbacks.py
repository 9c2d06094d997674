"""The OpenDSR callback route against the dev server, with a running PartnerWaitWorkflow and a real partner.

The partner (tests/connectors/opendsr_partner.py) serves discovery and its certificate over HTTP and signs its
callbacks with its own RSA key; the API fetches the certificate through discovery and verifies each callback.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from connectors.contract import ExternalWait, VerificationOutcome
from tests.api.support import api_client, assert_problem, make_settings
from tests.connectors.opendsr_partner import Partner, make_key, running_partner
from workers.config import SystemSettings
from workflows.messages import Notification, NotificationResult
from workflows.partner import PartnerWaitWorkflow
from workflows.tasks import PartnerWaitInput, SystemTask, partner_workflow_id

CALLBACK_BASE = "https://dsr.example.com/v1/callbacks/opendsr"
SYSTEM = "adpartner"


@activity.defn(name="dsr.verify_erasure")
async def verify_stub(task: SystemTask) -> VerificationOutcome:
    return VerificationOutcome(remaining={"partner": 1})


@activity.defn(name="dsr.notify")
async def notify_stub(note: Notification) -> NotificationResult:
    return NotificationResult(sent=True)


@pytest.fixture(scope="module")
async def partner() -> AsyncIterator[Partner]:
    async with running_partner(Partner()) as p:
        yield p


@pytest.fixture(scope="module")
async def setup(partner, temporal_env: WorkflowEnvironment, tmp_path_factory):
    queue = f"callbacks-{uuid.uuid4().hex}"
    settings = make_settings(queue, tmp_path_factory.mktemp("dsr-callbacks"))
    settings.systems = {
        SYSTEM: SystemSettings(type="opendsr", base_url=partner.url + "/v1/", processor_domain=partner.domain,
                               callback_base=CALLBACK_BASE),
        "appdb": SystemSettings(type="postgres"),
    }
    async with Worker(temporal_env.client, task_queue=queue, workflows=[PartnerWaitWorkflow],
                      activities=[verify_stub, notify_stub]):
        yield settings


@pytest.fixture
async def api(setup, temporal_env):
    async with api_client(setup, temporal_env.client) as tc:
        yield tc


async def _wait(setup, temporal_env, partner: Partner) -> tuple[str, str, WorkflowHandle]:
    """A submitted partner request and the running wait for it."""
    request_id = "req_" + uuid.uuid4().hex
    reference = str(uuid.uuid4())
    partner.requests[reference] = {"request_status": "pending",
                                   "status_callback_urls": [f"{CALLBACK_BASE}/{request_id}/{SYSTEM}"]}
    data = PartnerWaitInput(request_id=request_id, tenant="acme", system=SYSTEM,
                            identities={"email": "jane@example.com"},
                            external=ExternalWait(reference=reference, poll_every_seconds=86400))
    handle = await temporal_env.client.start_workflow(
        PartnerWaitWorkflow.run, data, id=partner_workflow_id(request_id, SYSTEM),
        task_queue=setup.temporal.task_queue)
    for _ in range(100):
        if await handle.query(PartnerWaitWorkflow.progress) is not None:
            break
        await asyncio.sleep(0.05)
    return request_id, reference, handle


def _path(request_id: str, system: str = SYSTEM) -> str:
    return f"/v1/callbacks/opendsr/{request_id}/{system}"


async def test_a_signed_callback_completes_the_wait_and_a_replay_changes_nothing(api, setup, temporal_env,
                                                                                 partner):
    request_id, reference, handle = await _wait(setup, temporal_env, partner)
    partner.set_status(reference, "in_progress")
    older, older_headers = partner.callback(reference)
    resp = await api.post(_path(request_id), data=older, headers=older_headers)
    assert resp.status == 200 and (await resp.json())["accepted"] is True
    assert (await handle.query(PartnerWaitWorkflow.progress)).status == "in_progress"

    partner.set_status(reference, "completed")
    body, headers = partner.callback(reference)
    resp = await api.post(_path(request_id), data=body, headers=headers)  # no bearer token: the signature is it
    assert resp.status == 200, await resp.text()
    assert (await asyncio.wait_for(handle.result(), 20)).ok

    for again, again_headers in [(body, headers), (older, older_headers)]:  # repeated, and older state replayed
        resp = await api.post(_path(request_id), data=again, headers=again_headers)
        assert resp.status == 200 and (await resp.json())["accepted"] is False
    assert (await handle.result()).ok


async def test_legacy_headers_are_accepted(api, setup, temporal_env, partner):
    request_id, reference, handle = await _wait(setup, temporal_env, partner)
    partner.set_status(reference, "completed")
    body, headers = partner.callback(reference, legacy=True)
    resp = await api.post(_path(request_id), data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await asyncio.wait_for(handle.result(), 20)).ok


@pytest.mark.parametrize("case", ["forged", "tampered", "unknown-domain", "unsigned", "another-request"])
async def test_bad_callbacks_are_refused(api, setup, temporal_env, partner, case):
    request_id, reference, handle = await _wait(setup, temporal_env, partner)
    partner.set_status(reference, "completed")
    body, headers = partner.callback(reference)
    path = _path(request_id)
    if case == "forged":
        body, headers = partner.callback(reference, key=make_key())
    elif case == "tampered":
        doc = json.loads(body)
        doc["subject_request_id"] = str(uuid.uuid4())
        body = json.dumps(doc).encode()
    elif case == "unknown-domain":
        body, headers = partner.callback(reference, domain="evil.example")
    elif case == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif case == "another-request":  # a genuine callback of this request replayed to another one's URL
        other, _, other_handle = await _wait(setup, temporal_env, partner)
        path = _path(other)
        handle = other_handle
    resp = await api.post(path, data=body, headers=headers)
    doc = await assert_problem(resp, 403)
    assert "jane" not in json.dumps(doc)
    progress = await handle.query(PartnerWaitWorkflow.progress)
    assert progress.status == "pending" and progress.callbacks == 0
    await handle.terminate("test over")


async def test_malformed_and_unknown(api, setup, temporal_env, partner):
    request_id, reference, handle = await _wait(setup, temporal_env, partner)
    body = b"[1, 2"
    await assert_problem(await api.post(_path(request_id), data=body, headers=partner.headers(body)), 400)
    doc = partner.status_document(reference, f"{CALLBACK_BASE}/{request_id}/{SYSTEM}")
    body = json.dumps({**doc, "request_status": "exploded"}).encode()
    await assert_problem(await api.post(_path(request_id), data=body, headers=partner.headers(body)), 400)
    body = json.dumps({**doc, "subject_request_id": "not-a-uuid"}).encode()
    await assert_problem(await api.post(_path(request_id), data=body, headers=partner.headers(body)), 400)
    # an unknown system, a system of another type, a request with no wait
    body, headers = partner.callback(reference)
    await assert_problem(await api.post(_path(request_id, "nosuch"), data=body, headers=headers), 404)
    await assert_problem(await api.post(_path(request_id, "appdb"), data=body, headers=headers), 404)
    nowait = "req_" + uuid.uuid4().hex
    partner.requests[reference]["status_callback_urls"] = [f"{CALLBACK_BASE}/{nowait}/{SYSTEM}"]
    body, headers = partner.callback(reference)
    await assert_problem(await api.post(_path(nowait), data=body, headers=headers), 404)
    assert (await handle.query(PartnerWaitWorkflow.progress)).callbacks == 0
    await handle.terminate("test over")
