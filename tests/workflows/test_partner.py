"""PartnerWaitWorkflow on a time-skipping test server of its own (it moves the clock by weeks; see test_backups)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from connectors.contract import ExternalWait, VerificationOutcome
from tests.conftest import tool
from workers.codec import AesGcmCodec, data_converter
from workers.worker import WORKFLOWS
from workflows.messages import Notification, NotificationKind, NotificationResult, Recipient
from workflows.partner import PartnerWaitWorkflow
from workflows.tasks import PartnerStatus, PartnerWaitInput, SystemTask, partner_workflow_id

REFERENCE = "0b0f8a52-4a3e-4c55-9d0e-6b1f7c2a9e11"


@pytest.fixture(scope="module")
async def env(codec: AesGcmCodec) -> AsyncIterator[WorkflowEnvironment]:
    server = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(codec), test_server_existing_path=tool("temporal-test-server")
    )
    yield server
    await server.shutdown()


class Stubs:
    """``dsr.verify_erasure`` (pending for the first ``pending`` polls) and ``dsr.notify``."""

    def __init__(self, pending: int = 10_000) -> None:
        self.pending = pending
        self.polls: list[SystemTask] = []
        self.notes: list[Notification] = []

    @activity.defn(name="dsr.verify_erasure")
    async def verify(self, task: SystemTask) -> VerificationOutcome:
        self.polls.append(task)
        if len(self.polls) <= self.pending:
            return VerificationOutcome(remaining={"partner": 1})
        return VerificationOutcome()

    @activity.defn(name="dsr.notify")
    async def notify(self, note: Notification) -> NotificationResult:
        self.notes.append(note)
        return NotificationResult(sent=True)


def _input(**wait) -> PartnerWaitInput:
    return PartnerWaitInput(request_id="req_" + uuid.uuid4().hex, tenant="acme", system="adpartner",
                            identities={"email": "jane@example.com"},
                            external=ExternalWait(reference=REFERENCE, **wait))


async def _progress(handle):
    for _ in range(200):
        progress = await handle.query(PartnerWaitWorkflow.progress)
        if progress is not None:
            return progress
        await asyncio.sleep(0.05)
    raise AssertionError("the workflow did not start")


def test_registered_with_the_worker():
    assert PartnerWaitWorkflow in WORKFLOWS
    assert partner_workflow_id("req_1", "adpartner") == "req_1/partner/adpartner"


async def test_completes_on_the_signal_and_ignores_what_comes_after(env):
    stubs = Stubs()
    data = _input()
    queue = "partner-" + uuid.uuid4().hex[:8]
    async with Worker(env.client, task_queue=queue, workflows=[PartnerWaitWorkflow],
                      activities=[stubs.verify, stubs.notify]):
        handle = await env.client.start_workflow(PartnerWaitWorkflow.run, data, task_queue=queue,
                                                 id=partner_workflow_id(data.request_id, data.system))
        await _progress(handle)
        now = await env.get_current_time()
        await handle.signal(PartnerWaitWorkflow.partner_status, PartnerStatus(status="in_progress", received_at=now))
        # a status for another reference is not ours
        await handle.signal(PartnerWaitWorkflow.partner_status,
                            PartnerStatus(status="completed", received_at=now, reference=str(uuid.uuid4())))
        assert (await handle.query(PartnerWaitWorkflow.progress)).status == "in_progress"
        await handle.signal(PartnerWaitWorkflow.partner_status,
                            PartnerStatus(status="completed", received_at=now, reference=REFERENCE))
        result = await handle.result()
        progress = await handle.query(PartnerWaitWorkflow.progress)
    assert result.ok
    assert progress.status == "completed" and progress.via == "callback" and progress.completed_at == now
    assert stubs.polls == [] and stubs.notes == []


async def test_completes_via_polling_when_no_callback_comes(env):
    stubs = Stubs(pending=2)
    data = _input(poll_every_seconds=3600)
    queue = "partner-" + uuid.uuid4().hex[:8]
    async with Worker(env.client, task_queue=queue, workflows=[PartnerWaitWorkflow],
                      activities=[stubs.verify, stubs.notify]):
        handle = await env.client.start_workflow(PartnerWaitWorkflow.run, data, task_queue=queue,
                                                 id=partner_workflow_id(data.request_id, data.system))
        result = await handle.result()
        progress = await handle.query(PartnerWaitWorkflow.progress)
    assert result.ok
    assert len(stubs.polls) == 3 and progress.via == "poll" and progress.polls == 3
    assert stubs.polls[0] == SystemTask(request_id=data.request_id, system="adpartner",
                                        identities={"email": "jane@example.com"})


async def test_reminds_then_times_out_with_the_partner_remaining(env):
    stubs = Stubs()
    data = _input(poll_every_seconds=86400, remind_after_days=7, timeout_days=30)
    queue = "partner-" + uuid.uuid4().hex[:8]
    async with Worker(env.client, task_queue=queue, workflows=[PartnerWaitWorkflow],
                      activities=[stubs.verify, stubs.notify]):
        handle = await env.client.start_workflow(PartnerWaitWorkflow.run, data, task_queue=queue,
                                                 id=partner_workflow_id(data.request_id, data.system))
        result = await handle.result()
        progress = await handle.query(PartnerWaitWorkflow.progress)
    assert result.remaining == {"partner": 1} and not result.ok
    assert progress.timed_out and progress.reminders == 4  # days 7, 14, 21, 28
    reminders = [n for n in stubs.notes if n.kind == NotificationKind.ADMIN_REMINDER]
    assert len(reminders) == 4 and all(n.recipient == Recipient.ADMIN for n in reminders)
    assert reminders[0].facts == {"waiting_for": "partner adpartner"}
    assert len({n.dedup_key for n in reminders}) == 4
    [escalation] = [n for n in stubs.notes if n.kind == NotificationKind.ESCALATION]
    assert escalation.recipient == Recipient.PRIVACY_OFFICE
    assert stubs.notes[-1] == escalation
    assert 29 <= len(stubs.polls) <= 30


async def test_a_cancelled_partner_fails_the_wait(env):
    stubs = Stubs()
    data = _input()
    queue = "partner-" + uuid.uuid4().hex[:8]
    async with Worker(env.client, task_queue=queue, workflows=[PartnerWaitWorkflow],
                      activities=[stubs.verify, stubs.notify]):
        handle = await env.client.start_workflow(PartnerWaitWorkflow.run, data, task_queue=queue,
                                                 id=partner_workflow_id(data.request_id, data.system))
        await _progress(handle)
        await handle.signal(PartnerWaitWorkflow.partner_status,
                            PartnerStatus(status="cancelled", received_at=await env.get_current_time()))
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    assert "cancelled" in str(info.value.cause)


async def test_timings_are_days_apart(env):
    """The wait is durable: nothing happens for days but polls."""
    stubs = Stubs()
    data = _input(poll_every_seconds=86400, remind_after_days=7, timeout_days=30)
    queue = "partner-" + uuid.uuid4().hex[:8]
    async with Worker(env.client, task_queue=queue, workflows=[PartnerWaitWorkflow],
                      activities=[stubs.verify, stubs.notify]):
        handle = await env.client.start_workflow(PartnerWaitWorkflow.run, data, task_queue=queue,
                                                 id=partner_workflow_id(data.request_id, data.system))
        await _progress(handle)
        await env.sleep(timedelta(days=3, hours=1))
        assert 2 <= len(stubs.polls) <= 3 and stubs.notes == []
        await handle.signal(PartnerWaitWorkflow.partner_status,
                            PartnerStatus(status="completed", received_at=await env.get_current_time()))
        assert (await handle.result()).ok
