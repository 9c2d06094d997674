"""The dispute workflow with the real activities, Fides' example database and its restriction, on time skipping.

Each test runs on a time-skipping test server of its own (``env``), not on the session's ``time_skipping_env``:
a dispute starts the subject coordinator as a child and ends before it, and the Java test server stops skipping
time for good once that has happened (sdk-java issues 1618 and 2392); see ``test_subject``.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.db import create_pool
from activities.export_store import export_store_from
from activities.requests import RequestActivities
from tests.conftest import tool
from tests.helpers import HASH_SECRET_ENV, fides_settings
from workers.codec import AesGcmCodec, data_converter
from workers.config import Settings, SystemSettings
from workflows.dispute import DisputeWorkflow
from workflows.messages import (
    DisputeInput,
    DisputeResolution,
    DisputeStatus,
    DisputeStep,
    Notification,
    NotificationKind,
    NotificationResult,
    Recipient,
    SubjectState,
    subject_workflow_id,
)
from workflows.models import RequestKind, RequestStatus, Step, SubjectIdentities
from workflows.request import DataSubjectRequestWorkflow
from workflows.subject import SubjectWorkflow

JANE = "jane@example.com"
JANE_ID = 3  # her row in Fides' example ``customer`` table
RESTRICTION = {"table": "dsr_restriction", "flag_column": "processing_restricted"}


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


@pytest.fixture
async def env(codec: AesGcmCodec) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server for this test alone (see the module's docstring)."""
    server = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(codec), test_server_existing_path=tool("temporal-test-server")
    )
    yield server
    await server.shutdown()


@pytest.fixture
async def app_db(fides_db: str) -> str:
    """Fides' example with the flag column the restriction mirrors into."""
    conn = await asyncpg.connect(fides_db)
    try:
        await conn.execute("ALTER TABLE customer ADD COLUMN IF NOT EXISTS processing_restricted boolean DEFAULT false")
    finally:
        await conn.close()
    return fides_db


def dispute_settings(app_db: str, tmp_path: Path, *, with_unrestrictable: bool = False) -> Settings:
    """Fides' example as ``appdb`` with a restriction; optionally a second system that cannot restrict."""
    settings = fides_settings(app_db, tmp_path)
    appdb = settings.systems["appdb"]
    options = {k: v for k, v in appdb.model_dump().items() if k != "restriction"}
    settings.systems["appdb"] = SystemSettings(**options, restriction=RESTRICTION)
    if with_unrestrictable:
        settings.systems["legacy"] = SystemSettings(**options)
    return settings


class NotifierStub:
    """Stands in for ``dsr.notify`` (the real notifier is being built at the same time): records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[datetime, Notification]] = []

    @activity.defn(name="dsr.notify")
    async def notify(self, note: Notification) -> NotificationResult:
        # The time of the attempt on the test server's clock, comparable with the audit records' times.
        self.sent.append((activity.info().current_attempt_scheduled_time, note))
        return NotificationResult(sent=True, outbox_id=len(self.sent))

    def kinds(self, request_id: str) -> list[NotificationKind]:
        return [n.kind for _, n in self.sent if n.request_id == request_id]

    def at(self, request_id: str, kind: NotificationKind) -> datetime:
        return next(t for t, n in self.sent if n.request_id == request_id and n.kind == kind)


def _activity_name(fn) -> str:
    return activity._Definition.must_from_callable(fn).name


@asynccontextmanager
async def dispute_worker(client: Client, settings: Settings, orchestrator_db: str) -> AsyncIterator[
        tuple[str, NotifierStub]]:
    """The request, subject and dispute workflows with the real activities and a recording notifier."""
    queue = "dispute-" + uuid.uuid4().hex[:12]
    notifier = NotifierStub()
    pool = await create_pool(orchestrator_db)
    acts = RequestActivities(settings, pool, export_store_from(settings))
    # Should the real notifier join RequestActivities, the stub still replaces it here.
    activities = [a for a in acts.all() if _activity_name(a) != "dsr.notify"] + [notifier.notify]
    try:
        async with Worker(client, task_queue=queue,
                          workflows=[DataSubjectRequestWorkflow, SubjectWorkflow, DisputeWorkflow],
                          activities=activities, max_concurrent_activities=50):
            yield queue, notifier
    finally:
        await acts.close()
        await pool.close()


def new_subject_key() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(secrets.choice(alphabet) for _ in range(26))


async def open_dispute(env: WorkflowEnvironment, queue: str, *, notice_days: int = 5,
                       kind: RequestKind = RequestKind.ERASURE) -> tuple[DisputeInput, WorkflowHandle]:
    dispute = DisputeInput(
        id="dsp_" + uuid.uuid4().hex, tenant="acme", identities=SubjectIdentities(email=JANE),
        subject_key=new_subject_key(), opened_by="support-agent-7", grounds="The subject contests the lawfulness",
        requested_kind=kind, notice_days=notice_days, opened_at=await env.get_current_time(),
    )
    handle = await env.client.start_workflow(DisputeWorkflow.run, dispute, id=dispute.id, task_queue=queue)
    return dispute, handle


async def status_when(handle: WorkflowHandle, check, tries: int = 300) -> DisputeStatus:
    status = None
    for _ in range(tries):
        status = await handle.query(DisputeWorkflow.status)
        if check(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"the dispute never reached the expected state; last {status}")


async def restricted_in_db(db_url: str, reference: str) -> tuple[bool, int]:
    """Jane's flag, and how many rows ``reference`` tags in the restriction table."""
    conn = await asyncpg.connect(db_url)
    try:
        flag = await conn.fetchval("SELECT processing_restricted FROM customer WHERE id = $1", JANE_ID)
        try:
            tags = await conn.fetchval("SELECT count(*) FROM dsr_restriction WHERE reference = $1", reference)
        except asyncpg.UndefinedTableError:
            tags = 0
        return bool(flag), tags
    finally:
        await conn.close()


async def jane_email(db_url: str) -> str | None:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT email FROM customer WHERE id = $1", JANE_ID)
    finally:
        await conn.close()


async def audit_times(orchestrator_db: str, request_id: str) -> dict[str, datetime]:
    conn = await asyncpg.connect(orchestrator_db)
    try:
        rows = await conn.fetch("SELECT event, at FROM dsr_audit WHERE request_id = $1 ORDER BY id", request_id)
    finally:
        await conn.close()
    return {r["event"]: r["at"] for r in rows}


async def coordinator_state(client: Client, dispute: DisputeInput) -> SubjectState:
    handle = client.get_workflow_handle(subject_workflow_id(dispute.tenant, dispute.subject_key))
    return await handle.query(SubjectWorkflow.state)


async def finish(client: Client, *workflow_ids: str) -> None:
    for wid in workflow_ids:
        with suppress(RPCError):
            await client.get_workflow_handle(wid).terminate("test over")


def resolution(outcome: str, **kw) -> DisputeResolution:
    return DisputeResolution(actor="admin-acme", outcome=outcome, reason="Reviewed the contract", **kw)


async def test_company_prevails_notice_first_then_lift(env, app_db, orchestrator_db, tmp_path):
    settings = dispute_settings(app_db, tmp_path, with_unrestrictable=True)
    async with dispute_worker(env.client, settings, orchestrator_db) as (queue, notifier):
        dispute, handle = await open_dispute(env, queue, notice_days=5)
        try:
            status = await status_when(handle, lambda s: s.step == DisputeStep.RESTRICTED
                                       and NotificationKind.RESTRICTION_APPLIED in notifier.kinds(dispute.id))
            assert status.restricted["appdb"]["customer"] == 1
            assert status.not_applicable == ["legacy"]
            assert status.failed == {}
            assert await restricted_in_db(app_db, dispute.id) == (True, sum(status.restricted["appdb"].values()))
            assert (await coordinator_state(env.client, dispute)).restricted_by == [dispute.id]
            applied = next(n for _, n in notifier.sent if n.kind == NotificationKind.RESTRICTION_APPLIED)
            assert applied.dedup_key == f"{dispute.id}:restriction_applied"
            assert applied.recipient == Recipient.SUBJECT and applied.identities.email == JANE

            # A long dispute: the restriction stays.
            await env.sleep(timedelta(days=30))
            assert (await restricted_in_db(app_db, dispute.id))[0]

            recorded = await handle.execute_update(DisputeWorkflow.resolve, resolution("company_prevails"))
            assert recorded.resolution is not None and recorded.resolution.outcome == "company_prevails"
            status = await status_when(handle, lambda s: s.subject_notified_at is not None)
            assert status.step == DisputeStep.NOTICE_PERIOD
            notice = next(n for _, n in notifier.sent if n.kind == NotificationKind.RESTRICTION_LIFT_NOTICE)
            assert notice.facts["lift_on"] == (status.subject_notified_at + timedelta(days=5)).date().isoformat()
            assert (await restricted_in_db(app_db, dispute.id))[0]

            # The notice period: one day short of it, still restricted.
            await env.sleep(timedelta(days=4))
            assert (await handle.query(DisputeWorkflow.status)).step == DisputeStep.NOTICE_PERIOD
            assert (await restricted_in_db(app_db, dispute.id))[0]

            result = await handle.result()
        finally:
            await finish(env.client, dispute.id)
        assert result.step == DisputeStep.CLOSED
        assert result.lifted_at is not None and result.subject_notified_at is not None
        assert result.lifted_at - result.subject_notified_at >= timedelta(days=5)
        assert await restricted_in_db(app_db, dispute.id) == (False, 0)
        assert (await coordinator_state(env.client, dispute)).restricted_by == []
        assert notifier.kinds(dispute.id) == [NotificationKind.RESTRICTION_APPLIED,
                                              NotificationKind.RESTRICTION_LIFT_NOTICE,
                                              NotificationKind.RESTRICTION_LIFTED]
        events = await audit_times(orchestrator_db, dispute.id)
        told = notifier.at(dispute.id, NotificationKind.RESTRICTION_LIFT_NOTICE)
        assert told < events["restriction_lifted"]
        assert events["restriction_lifted"] - told >= timedelta(days=5)
        names = list(events)
        assert names[0] == "dispute_opened" and names[-1] == "dispute_closed"
        # Deterministic: the history replays on the workflow code as it is.
        replayer = Replayer(workflows=[DisputeWorkflow], data_converter=env.client.data_converter)
        await replayer.replay_workflow(await handle.fetch_history())
        await finish(env.client, subject_workflow_id(dispute.tenant, dispute.subject_key))
    await _no_identity_in_audit(orchestrator_db)


async def test_subject_prevails_erasure_follows_then_lift(env, app_db, orchestrator_db, tmp_path):
    settings = dispute_settings(app_db, tmp_path)
    async with dispute_worker(env.client, settings, orchestrator_db) as (queue, notifier):
        dispute, handle = await open_dispute(env, queue)
        try:
            await status_when(handle, lambda s: s.step == DisputeStep.RESTRICTED)
            assert (await restricted_in_db(app_db, dispute.id))[0]
            await handle.execute_update(DisputeWorkflow.resolve, resolution("subject_prevails", tenant="acme"))
            # No timer needs to pass: wait in real time, so that the server skips no activity's timeout.
            with env.auto_time_skipping_disabled():
                result = await handle.result()
                follow_up = await env.client.get_workflow_handle(
                    f"{dispute.id}-followup", result_type=RequestStatus).result()
        finally:
            await finish(env.client, dispute.id, f"{dispute.id}-followup")
        assert result.step == DisputeStep.CLOSED, result.failed
        assert result.follow_up_request_id == f"{dispute.id}-followup"
        assert result.failed == {} and result.lifted_at is not None
        assert follow_up.kind == RequestKind.ERASURE and follow_up.step == Step.COMPLETED, follow_up.outcome_reason
        email = await jane_email(app_db)
        assert email != JANE and "jane" not in (email or "")
        assert await restricted_in_db(app_db, dispute.id) == (False, 0)
        assert (await coordinator_state(env.client, dispute)).restricted_by == []
        # The erased subject gets no "lifted" message: the follow-up request tells them it is done.
        assert NotificationKind.RESTRICTION_LIFT_NOTICE not in notifier.kinds(dispute.id)
        events = await audit_times(orchestrator_db, dispute.id)
        assert events["follow_up_finished"] <= events["restriction_lifted"]
        await finish(env.client, subject_workflow_id(dispute.tenant, dispute.subject_key))
    await _no_identity_in_audit(orchestrator_db)


async def test_resolving_twice_is_refused(env, app_db, orchestrator_db, tmp_path):
    settings = dispute_settings(app_db, tmp_path)
    async with dispute_worker(env.client, settings, orchestrator_db) as (queue, _):
        dispute, handle = await open_dispute(env, queue, notice_days=3)
        try:
            await status_when(handle, lambda s: s.step == DisputeStep.RESTRICTED)
            await handle.execute_update(DisputeWorkflow.resolve, resolution("company_prevails"))
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update(DisputeWorkflow.resolve,
                                            DisputeResolution(actor="b", outcome="subject_prevails", reason="no"))
            result = await handle.result()
        finally:
            await finish(env.client, dispute.id, subject_workflow_id(dispute.tenant, dispute.subject_key))
    assert result.step == DisputeStep.CLOSED
    assert result.resolution is not None and result.resolution.actor == "admin-acme"
    assert result.follow_up_request_id is None


async def test_another_tenant_cannot_resolve(env, app_db, orchestrator_db, tmp_path):
    settings = dispute_settings(app_db, tmp_path)
    async with dispute_worker(env.client, settings, orchestrator_db) as (queue, _):
        dispute, handle = await open_dispute(env, queue, notice_days=0)
        try:
            await status_when(handle, lambda s: s.step == DisputeStep.RESTRICTED)
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update(DisputeWorkflow.resolve, resolution("subject_prevails", tenant="globex"))
            status = await handle.query(DisputeWorkflow.status)
            assert status.step == DisputeStep.RESTRICTED and status.resolution is None
            assert (await restricted_in_db(app_db, dispute.id))[0]
            # The tenant's own administrator still can.
            await handle.execute_update(DisputeWorkflow.resolve, resolution("company_prevails", tenant="acme"))
            result = await handle.result()
        finally:
            await finish(env.client, dispute.id, subject_workflow_id(dispute.tenant, dispute.subject_key))
    assert result.step == DisputeStep.CLOSED and result.lifted_at is not None
    assert await restricted_in_db(app_db, dispute.id) == (False, 0)


async def test_a_follow_up_that_cannot_be_started_is_refused_at_resolution(env, app_db, orchestrator_db, tmp_path):
    settings = dispute_settings(app_db, tmp_path)
    async with dispute_worker(env.client, settings, orchestrator_db) as (queue, _):
        # A rectification needs its corrections, which this dispute does not carry.
        dispute, handle = await open_dispute(env, queue, kind=RequestKind.RECTIFICATION)
        try:
            await status_when(handle, lambda s: s.step == DisputeStep.RESTRICTED)
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update(DisputeWorkflow.resolve, resolution("subject_prevails"))
            assert (await handle.query(DisputeWorkflow.status)).resolution is None
        finally:
            await finish(env.client, dispute.id, subject_workflow_id(dispute.tenant, dispute.subject_key))


async def _no_identity_in_audit(orchestrator_db: str) -> None:
    conn = await asyncpg.connect(orchestrator_db)
    try:
        dump = str([dict(r) for r in await conn.fetch("SELECT event, system, actor, detail FROM dsr_audit")])
    finally:
        await conn.close()
    assert "jane" not in dump.lower()
