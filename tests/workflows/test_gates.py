"""The gates before execution on the time-skipping test server: identity verification, extension, cancellation.

Real worker, real activities, Fides' example database. Every request is received at the test server's
current time, which the session shares and which may be far ahead of the wall clock.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.helpers import HASH_SECRET_ENV, fides_settings, new_request, running_worker
from workflows import gates
from workflows.models import RequestKind, RequestStatus, Step, end_of_day, one_calendar_month_after
from workflows.request import DataSubjectRequestWorkflow
from workflows.updates import Cancellation, Decision, Extension, RecordedExtension, RecordedVerification, Verification

W = DataSubjectRequestWorkflow


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


async def _start(env: WorkflowEnvironment, queue: str, kind: RequestKind, **fields: Any) -> tuple[Any, WorkflowHandle]:
    """Start a request received now (server time); ``fields`` override the request's fields."""
    req = new_request(kind, received_at=await env.get_current_time()).model_copy(update=fields)
    handle = await env.client.start_workflow(W.run, req, id=req.id, task_queue=queue)
    return req, handle


async def _wait_for_step(handle: WorkflowHandle, *steps: Step, timeout: float = 10.0) -> RequestStatus:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while True:
        status = await handle.query(W.status)
        if status.step in steps:
            return status
        if loop.time() > give_up:
            raise AssertionError(f"never reached {steps}; last {status.step}")
        await asyncio.sleep(0.02)


async def _sleep_until(env: WorkflowEnvironment, moment: datetime) -> None:
    await env.sleep(moment - await env.get_current_time())


async def _jane_email(db_url: str) -> str | None:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT email FROM customer WHERE id = 3")
    finally:
        await conn.close()


async def _audit(db_url: str, request_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT event, actor, outcome, detail FROM dsr_audit WHERE request_id = $1 ORDER BY id", request_id
        )
    finally:
        await conn.close()
    out = []
    for r in rows:
        detail = r["detail"]
        out.append({**dict(r), "detail": json.loads(detail) if isinstance(detail, str) else detail})
    return out


def _refusal(err: pytest.ExceptionInfo[WorkflowUpdateFailedError]) -> str:
    return str(getattr(err.value.cause, "message", err.value.cause))


# --- identity verification ---------------------------------------------------------------


async def test_unverified_request_waits_and_the_clock_starts_at_verification(
    time_skipping_env, fides_db, orchestrator_db, tmp_path
):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        req, handle = await _start(env, queue, RequestKind.ACCESS, identity_verified=False)
        status = await _wait_for_step(handle, Step.AWAITING_VERIFICATION)
        assert status.verified_at is None
        # The approval gate is not open yet: the admin cannot decide for an unverified subject.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(W.decide, Decision(actor="admin-acme", outcome="approve"))

        await env.sleep(timedelta(days=3))
        assert (await handle.query(W.status)).step == Step.AWAITING_VERIFICATION
        recorded = await handle.execute_update(W.verify, Verification(actor="support-7", method="id-document"))
        assert isinstance(recorded, RecordedVerification)
        assert recorded.verified_at - req.received_at >= timedelta(days=3)

        status = await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        assert status.verified_at == recorded.verified_at
        assert status.verification is not None and status.verification.method == "id-document"
        # Art. 12(6): the month runs from verification, not from receipt.
        assert status.due_at == end_of_day(one_calendar_month_after(recorded.verified_at))
        assert status.due_at > end_of_day(one_calendar_month_after(req.received_at))

        await handle.execute_update(W.decide, Decision(actor="admin-acme", outcome="approve"))
        result = await handle.result()

    assert result.step == Step.COMPLETED, result.outcome_reason
    assert result.bundle is not None and not result.overdue
    events = await _audit(orchestrator_db, req.id)
    names = [e["event"] for e in events]
    assert names.index("received") < names.index("identity_verified") < names.index("decided")
    verified = events[names.index("identity_verified")]
    assert verified["actor"] == "support-7" and verified["detail"] == {"method": "id-document"}


async def test_unverified_request_closes_after_the_configured_period(
    time_skipping_env, fides_db, orchestrator_db, tmp_path
):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        req, handle = await _start(
            env, queue, RequestKind.ERASURE, identity_verified=False, verification_timeout_days=5
        )
        await _wait_for_step(handle, Step.AWAITING_VERIFICATION)
        await env.sleep(timedelta(days=4))
        assert (await handle.query(W.status)).step == Step.AWAITING_VERIFICATION
        await env.sleep(timedelta(days=1, hours=1))
        result = await handle.result()

    assert result.step == Step.UNVERIFIED
    assert result.outcome_reason == "identity was not verified within 5 days of receipt"
    assert result.completed_at is not None
    assert timedelta(days=5) <= result.completed_at - req.received_at < timedelta(days=5, hours=1)
    assert result.systems == {} and result.decision is None
    assert await _jane_email(fides_db) == "jane@example.com"
    assert [e["event"] for e in await _audit(orchestrator_db, req.id)] == ["received", "finished"]


async def test_verify_is_refused_twice_and_for_a_verified_request(
    time_skipping_env, fides_db, orchestrator_db, tmp_path
):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        _, handle = await _start(env, queue, RequestKind.ACCESS, identity_verified=False)
        await _wait_for_step(handle, Step.AWAITING_VERIFICATION)
        first = await handle.execute_update(W.verify, Verification(actor="support-7", method="email-link"))
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(W.verify, Verification(actor="support-8", method="id-document"))
        assert _refusal(err) == "identity is already verified"
        status = await handle.query(W.status)
        assert status.verification == first and status.verified_at == first.verified_at

        _, verified = await _start(env, queue, RequestKind.ACCESS)  # arrived verified (the default)
        await _wait_for_step(verified, Step.AWAITING_APPROVAL)
        with pytest.raises(WorkflowUpdateFailedError):
            await verified.execute_update(W.verify, Verification(actor="support-7", method="email-link"))
        await handle.terminate("test over")
        await verified.terminate("test over")

    with pytest.raises(ValidationError):
        Verification(actor="support-7", method=" ")


# --- extension ---------------------------------------------------------------------------


async def test_extension_moves_the_deadline_and_the_overdue_timer(
    time_skipping_env, fides_db, orchestrator_db, tmp_path
):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        req, handle = await _start(env, queue, RequestKind.ACCESS)
        old_due = (await _wait_for_step(handle, Step.AWAITING_APPROVAL)).due_at
        assert old_due == end_of_day(one_calendar_month_after(req.received_at))

        await env.sleep(timedelta(days=10))
        recorded = await handle.execute_update(
            W.extend, Extension(actor="admin-acme", months=2, reason="Records span five systems", tenant="acme")
        )
        assert isinstance(recorded, RecordedExtension)
        new_due = end_of_day(one_calendar_month_after(req.received_at, 3))
        assert (recorded.original_due_at, recorded.new_due_at) == (old_due, new_due)
        status = await handle.query(W.status)
        assert status.due_at == new_due and status.extension == recorded

        await _sleep_until(env, old_due + timedelta(days=1))
        assert not (await handle.query(W.status)).overdue
        await _sleep_until(env, new_due - timedelta(hours=1))
        assert not (await handle.query(W.status)).overdue
        await env.sleep(timedelta(hours=2))
        status = await handle.query(W.status)
        assert status.overdue and status.step == Step.AWAITING_APPROVAL

        await handle.execute_update(W.decide, Decision(actor="admin-acme", outcome="approve"))
        result = await handle.result()

    assert result.step == Step.COMPLETED and result.overdue and result.due_at == new_due
    events = await _audit(orchestrator_db, req.id)
    extended = [e for e in events if e["event"] == "extended"]
    assert len(extended) == 1
    assert extended[0]["actor"] == "admin-acme"
    assert extended[0]["detail"] == {"months": 2, "new_due_at": new_due.isoformat()}
    assert "five systems" not in json.dumps(events, default=str)
    names = [e["event"] for e in events]
    assert names.index("extended") < names.index("deadline_passed")


async def test_second_extension_is_refused(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        req, handle = await _start(env, queue, RequestKind.ACCESS)
        await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        await handle.execute_update(W.extend, Extension(actor="admin-acme", months=1, reason="Complex request"))
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(W.extend, Extension(actor="admin-acme", months=1, reason="Still complex"))
        assert "only once" in _refusal(err)
        status = await handle.query(W.status)
        assert status.extension is not None and status.extension.reason == "Complex request"
        assert status.due_at == end_of_day(one_calendar_month_after(req.received_at, 2))
        await handle.terminate("test over")


async def test_extension_after_the_first_month_is_refused(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        _, handle = await _start(env, queue, RequestKind.ACCESS)
        due = (await _wait_for_step(handle, Step.AWAITING_APPROVAL)).due_at
        await env.sleep(timedelta(days=32))
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(W.extend, Extension(actor="admin-acme", months=2, reason="Too late"))
        assert "first month ended" in _refusal(err)
        # Another tenant's admin is refused too, before anything else is said about the request.
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(
                W.extend, Extension(actor="admin-globex", months=1, reason="x", tenant="globex")
            )
        assert "own tenant" in _refusal(err)
        status = await handle.query(W.status)
        assert status.extension is None and status.due_at == due and status.overdue
        await handle.terminate("test over")


def test_extension_input_is_bounded():
    with pytest.raises(ValidationError):
        Extension(actor="admin-acme", months=3, reason="Very complex")
    with pytest.raises(ValidationError):
        Extension(actor="admin-acme", months=0, reason="Very complex")
    with pytest.raises(ValidationError):
        Extension(actor="admin-acme", months=1, reason="  ")


def test_extension_is_refused_for_a_finished_or_unverified_request():
    req = new_request(RequestKind.ACCESS)
    status = RequestStatus(id=req.id, tenant=req.tenant, kind=req.kind, step=Step.COMPLETED,
                           received_at=req.received_at, due_at=gates.due_date(req.received_at))
    ext = Extension(actor="admin-acme", months=1, reason="Complex request")
    with pytest.raises(ValueError, match="has finished"):
        gates.check_extension(req, status, ext, req.received_at + timedelta(days=1))
    unverified = req.model_copy(update={"identity_verified": False})
    status.step = Step.AWAITING_VERIFICATION
    with pytest.raises(ValueError, match="not verified yet"):
        gates.check_extension(unverified, status, ext, req.received_at + timedelta(days=1))


# --- cancellation ------------------------------------------------------------------------


async def test_cancel_while_awaiting_approval_touches_nothing(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        req, handle = await _start(env, queue, RequestKind.ERASURE)
        await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        recorded = await handle.execute_update(
            W.cancel, Cancellation(actor="subject-portal", reason="I changed my mind")
        )
        result = await handle.result()

    assert result.step == Step.CANCELLED
    assert result.outcome_reason == "cancelled by subject-portal: I changed my mind"
    assert result.cancellation == recorded and result.decision is None
    assert result.systems == {}
    assert await _jane_email(fides_db) == "jane@example.com"
    events = await _audit(orchestrator_db, req.id)
    assert [e["event"] for e in events] == ["received", "cancelled", "finished"]
    assert events[1]["actor"] == "subject-portal" and events[-1]["outcome"] == "cancelled"
    assert "changed my mind" not in json.dumps(events, default=str)


async def test_cancel_while_awaiting_verification(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    env = time_skipping_env
    async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
        _, handle = await _start(env, queue, RequestKind.ERASURE, identity_verified=False)
        await _wait_for_step(handle, Step.AWAITING_VERIFICATION)
        await handle.execute_update(W.cancel, Cancellation(actor="support-7"))
        result = await handle.result()
    assert result.step == Step.CANCELLED and result.outcome_reason == "cancelled by support-7"
    assert result.verified_at is None and result.systems == {}


async def test_cancel_after_execution_started_is_refused(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    env = time_skipping_env
    # Hold jane's customer row so that the erasure stays in progress while we try to cancel.
    blocker = await asyncpg.connect(fides_db)
    tx = blocker.transaction()
    await tx.start()
    try:
        await blocker.execute("SELECT 1 FROM customer WHERE id = 3 FOR UPDATE")
        async with running_worker(fides_settings(fides_db, tmp_path), env.client, orchestrator_db) as queue:
            _, handle = await _start(env, queue, RequestKind.ERASURE)
            await _wait_for_step(handle, Step.AWAITING_APPROVAL)
            await handle.execute_update(W.decide, Decision(actor="admin-acme", outcome="approve"))
            await _wait_for_step(handle, Step.EXECUTING)
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(W.cancel, Cancellation(actor="subject-portal"))
            assert _refusal(err) == (
                "execution has started; a request cannot be cancelled once systems are being changed"
            )
            await tx.rollback()
            result = await handle.result()
    finally:
        await blocker.close()

    assert result.step == Step.COMPLETED, result.outcome_reason
    assert result.cancellation is None
    assert await _jane_email(fides_db) != "jane@example.com"
