"""The subject coordinator on the time-skipping test server: one change at a time, erasures held by a dispute.

The request workflow does not take the subject lock yet, so these tests drive the coordinator with small test
workflows that inherit ``SubjectLockClient``: acquire, run a test activity that records its window, release.

Each test runs on a time-skipping test server of its own (``env``), not on the session's ``time_skipping_env``:
the Java test server stops skipping time for good once a workflow has completed while a child it started still
runs (sdk-java issues 1618 and 2392), which is exactly what a workflow that starts the subject coordinator does.
On the shared server that would make every later test's ``env.sleep`` hang. (A real server is not affected.)
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

import pytest
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from tests.conftest import tool
from workers.codec import AesGcmCodec, data_converter
from workflows.messages import (
    LockRelease,
    LockRequest,
    RestrictionChange,
    SubjectInput,
    SubjectState,
    subject_workflow_id,
)
from workflows.subject import IDLE_TIMEOUT, SubjectLockClient, SubjectWorkflow

TENANT = "acme"


@pytest.fixture
async def env(codec: AesGcmCodec) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server for this test alone (see the module's docstring)."""
    server = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(codec), test_server_existing_path=tool("temporal-test-server")
    )
    yield server
    await server.shutdown()


def new_subject_key() -> str:
    """A fresh opaque subject key (base32 alphabet, as the API's keyed hash)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(secrets.choice(alphabet) for _ in range(26))


class ChangeInput(BaseModel):
    """What a test change does: take the subject's lock as ``kind``, then hold it for ``hold_seconds``."""

    tenant: str
    subject_key: str
    kind: str
    hold_seconds: float = 0.3


class Window(BaseModel):
    """When a change ran (wall clock of the test process: activities run in real time)."""

    workflow_id: str
    kind: str
    start: float
    end: float


class Recorder:
    """The test activity: records each change's execution window."""

    def __init__(self) -> None:
        self.windows: list[Window] = []
        self.running = 0
        self.max_running = 0

    @activity.defn(name="test.change")
    async def change(self, data: ChangeInput) -> Window:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        start = time.monotonic()
        try:
            await asyncio.sleep(data.hold_seconds)
        finally:
            self.running -= 1
        window = Window(workflow_id=activity.info().workflow_id, kind=data.kind, start=start, end=time.monotonic())
        self.windows.append(window)
        return window


@workflow.defn(name="SubjectLockTestChange", sandboxed=False)
class ChangeWorkflow(SubjectLockClient):
    """A stand-in for a mutating request: its execution step runs only under the subject's lock."""

    @workflow.run
    async def run(self, data: ChangeInput) -> Window:
        await self._acquire_subject(data.tenant, data.subject_key, data.kind)
        try:
            # No retry, and a timeout the test server's skipping cannot reach: an attempt never overlaps another.
            return await workflow.execute_activity(
                "test.change", data, result_type=Window, start_to_close_timeout=timedelta(days=3650),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        finally:
            await self._release_subject(data.tenant, data.subject_key)


@asynccontextmanager
async def coordinator_worker(client: Client) -> AsyncIterator[tuple[str, Recorder]]:
    """A worker for the coordinator and the test changes on a fresh task queue."""
    queue = "subject-" + uuid.uuid4().hex[:12]
    recorder = Recorder()
    async with Worker(client, task_queue=queue, workflows=[SubjectWorkflow, ChangeWorkflow],
                      activities=[recorder.change]):
        yield queue, recorder


async def start_change(client: Client, queue: str, subject_key: str, kind: str, **kw) -> WorkflowHandle:
    data = ChangeInput(tenant=TENANT, subject_key=subject_key, kind=kind, **kw)
    return await client.start_workflow(ChangeWorkflow.run, data, id=f"chg-{kind}-{uuid.uuid4().hex[:10]}",
                                       task_queue=queue)


async def state_when(handle: WorkflowHandle, check, tries: int = 200) -> SubjectState:
    """Poll the coordinator's state until ``check`` holds."""
    state = None
    for _ in range(tries):
        try:
            state = await handle.query(SubjectWorkflow.state)
        except RPCError:  # not started yet
            state = None
        if state is not None and check(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"coordinator never reached the expected state; last {state}")


async def finish(client: Client, *workflow_ids: str) -> None:
    """End what a test left running, so that nothing waits on a task queue whose worker is gone."""
    for wid in workflow_ids:
        with suppress(RPCError):
            await client.get_workflow_handle(wid).terminate("test over")


async def outcome(env: WorkflowEnvironment, handle: WorkflowHandle) -> Window:
    """The result, waited for in real time.

    ``result()`` lets the test server skip time, and it skips even while activities run (and to the coordinator's
    timers); these tests are about order, so the clock stays real while the changes execute.
    """
    with env.auto_time_skipping_disabled():
        return await handle.result()


def assert_disjoint(windows: list[Window]) -> None:
    ordered = sorted(windows, key=lambda w: w.start)
    for first, second in itertools.pairwise(ordered):
        assert first.end <= second.start, f"{first.workflow_id} and {second.workflow_id} overlapped"


async def test_changes_started_at_once_run_one_at_a_time(env: WorkflowEnvironment):
    client = env.client
    key = new_subject_key()
    coordinator = subject_workflow_id(TENANT, key)
    try:
        async with coordinator_worker(client) as (queue, recorder):
            kinds = ["erasure", "rectification", "erasure", "deactivation"]
            # All at once: nobody runs the coordinator yet, so they race to start it (one starts it, the others
            # find it started and signal it).
            handles = await asyncio.gather(*(start_change(client, queue, key, k) for k in kinds))
            windows = await asyncio.gather(*(outcome(env, h) for h in handles))

            assert len(windows) == len(kinds)
            assert recorder.max_running == 1
            assert_disjoint(list(windows))
            await state_when(client.get_workflow_handle(coordinator), lambda s: s == SubjectState())
    finally:
        await finish(client, coordinator)


async def test_without_the_lock_the_same_changes_would_overlap(env: WorkflowEnvironment):
    """The control for the test above: different subjects do run at the same time."""
    client = env.client
    keys = [new_subject_key(), new_subject_key()]
    try:
        async with coordinator_worker(client) as (queue, recorder):
            handles = [await start_change(client, queue, k, "erasure", hold_seconds=1.0) for k in keys]
            await asyncio.gather(*(outcome(env, h) for h in handles))
        assert recorder.max_running == 2
    finally:
        await finish(client, *(subject_workflow_id(TENANT, k) for k in keys))


async def test_erasure_waits_while_restricted_and_others_pass(env: WorkflowEnvironment):
    client = env.client
    key = new_subject_key()
    coordinator_id = subject_workflow_id(TENANT, key)
    dispute = RestrictionChange(dispute_id="dsp_" + uuid.uuid4().hex[:12])
    try:
        async with coordinator_worker(client) as (queue, recorder):
            # A dispute opens: the client path, signal-with-start.
            coordinator = await client.start_workflow(
                SubjectWorkflow.run, SubjectInput(tenant=TENANT, subject_key=key), id=coordinator_id,
                task_queue=queue, start_signal="restricted", start_signal_args=[dispute],
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            await state_when(coordinator, lambda s: s.restricted_by == [dispute.dispute_id])

            erasure = await start_change(client, queue, key, "erasure")
            await state_when(coordinator, lambda s: s.waiting == [erasure.id])
            # Behind the held erasure, a rectification (a change, but not an erasure) and an access proceed.
            rectification = await start_change(client, queue, key, "rectification")
            access = await start_change(client, queue, key, "access")
            passed = [await outcome(env, rectification), await outcome(env, access)]
            assert [w.kind for w in passed] == ["rectification", "access"]

            state = await coordinator.query(SubjectWorkflow.state)
            assert state.holder is None and state.waiting == [erasure.id]
            assert not [w for w in recorder.windows if w.kind == "erasure"]
            # Time passes (a long dispute): the erasure still waits.
            await env.sleep(timedelta(days=3))
            assert (await coordinator.query(SubjectWorkflow.state)).waiting == [erasure.id]

            lifted_at = time.monotonic()
            await coordinator.signal(SubjectWorkflow.unrestricted, dispute)
            erased = await outcome(env, erasure)
            assert erased.start >= lifted_at
            assert all(w.end <= erased.start for w in passed)
            assert_disjoint(recorder.windows)
            # Deterministic: the histories replay on the workflow code as it is.
            replayer = Replayer(workflows=[SubjectWorkflow, ChangeWorkflow], data_converter=client.data_converter)
            await replayer.replay_workflow(await coordinator.fetch_history())
            await replayer.replay_workflow(await erasure.fetch_history())
    finally:
        await finish(client, coordinator_id)


async def test_duplicates_and_releases_by_waiters(env: WorkflowEnvironment):
    client = env.client
    key = new_subject_key()
    coordinator_id = subject_workflow_id(TENANT, key)
    try:
        async with coordinator_worker(client) as (queue, _):
            # Started with carried state, as after continue-as-new: someone (not a real workflow) holds the lock.
            coordinator = await client.start_workflow(
                SubjectWorkflow.run,
                SubjectInput(tenant=TENANT, subject_key=key, holder=LockRequest(workflow_id="ghost", kind="erasure")),
                id=coordinator_id, task_queue=queue,
            )
            for wid in ("x", "x", "y"):
                await coordinator.signal(SubjectWorkflow.acquire, LockRequest(workflow_id=wid, kind="access"))
            state = await state_when(coordinator, lambda s: len(s.waiting) == 2)
            assert state.holder == "ghost" and state.waiting == ["x", "y"]

            await coordinator.signal(SubjectWorkflow.release, LockRelease(workflow_id="x"))  # a waiter gives up
            await state_when(coordinator, lambda s: s.waiting == ["y"])
            # The holder releases; "y" is no workflow at all, so granting it fails and is passed over.
            await coordinator.signal(SubjectWorkflow.release, LockRelease(workflow_id="ghost"))
            await state_when(coordinator, lambda s: s == SubjectState())
    finally:
        await finish(client, coordinator_id)


async def test_a_holder_or_waiter_that_is_gone_does_not_block_the_subject(env: WorkflowEnvironment):
    client = env.client
    key = new_subject_key()
    coordinator_id = subject_workflow_id(TENANT, key)
    try:
        async with coordinator_worker(client) as (queue, _):
            # A holder that ended without releasing, and a waiter that ended before its turn.
            carried = SubjectInput(
                tenant=TENANT, subject_key=key,
                holder=LockRequest(workflow_id="ended-holder", kind="erasure"),
                waiting=[LockRequest(workflow_id="ended-waiter", kind="rectification")],
            )
            coordinator = await client.start_workflow(SubjectWorkflow.run, carried, id=coordinator_id,
                                                      task_queue=queue)
            change = await start_change(client, queue, key, "erasure")
            await state_when(coordinator, lambda s: s.waiting == ["ended-waiter", change.id])
            # Waiting for the result lets the test server skip to the coordinator's check of its holder.
            window = await change.result()
            assert window.workflow_id == change.id
            assert (await coordinator.query(SubjectWorkflow.state)) == SubjectState()
    finally:
        await finish(client, coordinator_id)


async def test_a_waiter_that_gives_up_leaves_the_queue(env: WorkflowEnvironment):
    client = env.client
    key = new_subject_key()
    coordinator_id = subject_workflow_id(TENANT, key)
    dispute = RestrictionChange(dispute_id="dsp_" + uuid.uuid4().hex[:12])
    try:
        async with coordinator_worker(client) as (queue, _):
            coordinator = await client.start_workflow(
                SubjectWorkflow.run, SubjectInput(tenant=TENANT, subject_key=key, restricted_by=[dispute.dispute_id]),
                id=coordinator_id, task_queue=queue,
            )
            erasure = await start_change(client, queue, key, "erasure")
            await state_when(coordinator, lambda s: s.waiting == [erasure.id])
            await erasure.terminate("the subject withdrew")
            await coordinator.signal(SubjectWorkflow.unrestricted, dispute)
            # Granting the ended erasure fails; the coordinator passes over it and stays healthy.
            await state_when(coordinator, lambda s: s == SubjectState())
            later = await start_change(client, queue, key, "erasure")
            assert (await outcome(env, later)).workflow_id == later.id
    finally:
        await finish(client, coordinator_id)



async def test_an_idle_coordinator_ends_after_a_day(env: WorkflowEnvironment):
    client = env.client
    key = new_subject_key()
    coordinator_id = subject_workflow_id(TENANT, key)
    try:
        async with coordinator_worker(client) as (queue, _):
            coordinator = await client.start_workflow(
                SubjectWorkflow.run, SubjectInput(tenant=TENANT, subject_key=key), id=coordinator_id, task_queue=queue
            )
            change = await start_change(client, queue, key, "erasure")
            await outcome(env, change)
            await state_when(coordinator, lambda s: s == SubjectState())
            await env.sleep(IDLE_TIMEOUT - timedelta(minutes=5))
            assert (await coordinator.describe()).status == WorkflowExecutionStatus.RUNNING
            await env.sleep(timedelta(minutes=10))
            assert (await coordinator.describe()).status == WorkflowExecutionStatus.COMPLETED
            assert await coordinator.result() == SubjectState()
            # A later change starts a new one (the id may be reused once the last one ended).
            again = await start_change(client, queue, key, "rectification")
            assert (await outcome(env, again)).workflow_id == again.id
    finally:
        await finish(client, coordinator_id)
