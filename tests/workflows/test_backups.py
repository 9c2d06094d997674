"""BackupExpiryWorkflow on the time-skipping test server: the durable wait until the backups expire, then the check.

A test server of this module's own: these workflows move its clock by weeks, which tests that date requests by
the wall clock on the shared server must not see.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from connectors.contract import VerificationOutcome
from tests.conftest import tool
from workers.codec import AesGcmCodec, data_converter
from workers.worker import WORKFLOWS
from workflows.backups import BackupExpiryWorkflow, backup_expiry_workflow_id
from workflows.tasks import BackupExpiryInput, SystemTask


@pytest.fixture(scope="module")
async def env(codec: AesGcmCodec) -> AsyncIterator[WorkflowEnvironment]:
    server = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(codec), test_server_existing_path=tool("temporal-test-server")
    )
    yield server
    await server.shutdown()


class VerifyStub:
    """Stands in for ``dsr.verify_erasure``: backups remain for the first ``remain`` checks (or fail)."""

    def __init__(self, remain: int = 0, *, fail_attempts: int = 0, non_retryable: bool = False) -> None:
        self.remain = remain
        self.fail_attempts = fail_attempts
        self.non_retryable = non_retryable
        self.calls: list[tuple[datetime, SystemTask]] = []
        self.attempts = 0

    @activity.defn(name="dsr.verify_erasure")
    async def verify(self, task: SystemTask) -> VerificationOutcome:
        self.attempts += 1
        if self.attempts <= self.fail_attempts:
            raise ApplicationError("S3 unreachable", type="ConnectorError", non_retryable=self.non_retryable)
        self.calls.append((activity.info().current_attempt_scheduled_time, task))
        if len(self.calls) <= self.remain:
            return VerificationOutcome(remaining={"backups": 2})
        return VerificationOutcome()


async def _run(env: WorkflowEnvironment, stub: VerifyStub, completes_in: timedelta, **fields):
    queue = "backups-" + uuid.uuid4().hex[:8]
    now = await env.get_current_time()
    data = BackupExpiryInput(request_id="req_" + uuid.uuid4().hex, tenant="acme", system="backups",
                             identities={"email": "jane@example.com"}, completes_at=now + completes_in, **fields)
    async with Worker(env.client, task_queue=queue, workflows=[BackupExpiryWorkflow], activities=[stub.verify]):
        handle = await env.client.start_workflow(
            BackupExpiryWorkflow.run, data, id=backup_expiry_workflow_id(data.request_id, data.system),
            task_queue=queue)
        try:
            result = await handle.result()
        except WorkflowFailureError as err:
            return data, None, err
        # A closed workflow's query is answered by a worker replaying it: ask while this one runs.
        return data, await handle.query(BackupExpiryWorkflow.progress), result


def test_registered_with_the_worker():
    assert BackupExpiryWorkflow in WORKFLOWS


async def test_sleeps_until_the_backups_expire_then_verifies(env):
    stub = VerifyStub()
    queue = "backups-" + uuid.uuid4().hex[:8]
    completes_at = await env.get_current_time() + timedelta(days=35)
    data = BackupExpiryInput(request_id="req_wait", tenant="acme", system="backups",
                             identities={"email": "jane@example.com"}, completes_at=completes_at)
    async with Worker(env.client, task_queue=queue, workflows=[BackupExpiryWorkflow], activities=[stub.verify]):
        handle = await env.client.start_workflow(BackupExpiryWorkflow.run, data, id="req_wait/backups/backups",
                                                 task_queue=queue)
        for _ in range(100):
            progress = await handle.query(BackupExpiryWorkflow.progress)
            if progress is not None:
                break
            await asyncio.sleep(0.05)
        assert progress.checks == 0 and progress.next_check_at == completes_at
        await env.sleep(timedelta(days=20))
        assert stub.calls == []  # still waiting, durably
        result = await handle.result()
        progress = await handle.query(BackupExpiryWorkflow.progress)
    assert result.ok
    assert len(stub.calls) == 1
    called_at, task = stub.calls[0]
    assert completes_at <= called_at < completes_at + timedelta(minutes=1)
    assert task == SystemTask(request_id="req_wait", system="backups", identities={"email": "jane@example.com"})
    assert progress.checks == 1 and progress.next_check_at is None and progress.remaining == {}


async def test_looks_again_daily_while_backups_remain(env):
    stub = VerifyStub(remain=3)
    data, progress, result = await _run(env, stub, timedelta(days=7))
    assert result.ok
    times = [t for t, _ in stub.calls]
    assert len(times) == 4
    assert times[0] >= data.completes_at
    for earlier, later in itertools.pairwise(times):
        assert timedelta(days=1) <= later - earlier < timedelta(days=1, minutes=1)
    assert progress.checks == 4


async def test_gives_up_after_thirty_retries_with_what_remains(env):
    stub = VerifyStub(remain=1000)
    _, _, result = await _run(env, stub, timedelta(days=1))
    assert not result.ok and result.remaining == {"backups": 2}
    assert len(stub.calls) == 31
    assert stub.calls[-1][0] - stub.calls[0][0] >= timedelta(days=30)


async def test_a_past_expiry_is_verified_at_once(env):
    stub = VerifyStub()
    data, _, result = await _run(env, stub, -timedelta(days=3))
    assert result.ok
    assert stub.calls[0][0] - (data.completes_at + timedelta(days=3)) < timedelta(minutes=1)


async def test_a_check_that_keeps_failing_is_tried_again_the_next_day(env):
    stub = VerifyStub(fail_attempts=8)  # every attempt of the first check
    data, progress, result = await _run(env, stub, timedelta(days=2))
    assert result.ok
    assert stub.calls[0][0] >= data.completes_at + timedelta(days=1)
    assert progress.checks == 2 and progress.last_error is None


async def test_an_error_no_retry_can_fix_fails_the_wait(env):
    stub = VerifyStub(fail_attempts=1, non_retryable=True)
    _, _, err = await _run(env, stub, timedelta(days=2))
    assert isinstance(err, WorkflowFailureError)
    assert stub.calls == []
