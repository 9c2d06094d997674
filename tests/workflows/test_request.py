"""The request workflow on the time-skipping test server, with the real activities and Fides' example database."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from tests.helpers import HASH_SECRET_ENV, fides_settings, new_request, running_worker
from workflows.models import RequestKind, RequestPolicy, RequestStatus, Step, SystemState
from workflows.request import DataSubjectRequestWorkflow
from workflows.updates import Decision, RecordedDecision


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


async def _start(env: WorkflowEnvironment, queue: str, kind: RequestKind, **kw):
    req = new_request(kind, **kw)
    handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
    return req, handle


async def _wait_for_step(handle, step: Step) -> RequestStatus:
    for _ in range(100):
        status = await handle.query(DataSubjectRequestWorkflow.status)
        if status.step == step:
            return status
        import asyncio

        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {step}; last {status.step}")


async def _jane(db_url: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchrow("SELECT email, name FROM customer WHERE id = 3")
    finally:
        await conn.close()


async def test_approved_erasure_erases_and_verifies(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, time_skipping_env.client, orchestrator_db) as queue:
        req, handle = await _start(time_skipping_env, queue, RequestKind.ERASURE)
        await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        assert (await _jane(fides_db))["email"] == "jane@example.com"  # nothing happens before approval

        recorded = await handle.execute_update(
            DataSubjectRequestWorkflow.decide, Decision(actor="admin-acme", outcome="approve", reason="ok")
        )
        assert isinstance(recorded, RecordedDecision)
        result = await handle.result()

    assert result.step == Step.COMPLETED, result.outcome_reason
    appdb = result.systems["appdb"]
    assert appdb.state == SystemState.DONE
    assert appdb.found["customer"] == 1
    assert appdb.masked.get("customer") == 1
    assert appdb.deleted.get("login") == 1
    assert any(r.collection == "orders" for r in appdb.retained)
    row = await _jane(fides_db)
    assert row["email"] != "jane@example.com" and "jane" not in (row["email"] or "")
    assert row["name"] == "REDACTED"

    conn = await asyncpg.connect(orchestrator_db)
    events = [r["event"] for r in await conn.fetch(
        "SELECT event FROM dsr_audit WHERE request_id = $1 ORDER BY id", req.id)]
    dump = json.dumps([dict(r) for r in await conn.fetch("SELECT detail, actor FROM dsr_audit")], default=str)
    await conn.close()
    assert events[0] == "received" and "decided" in events and "verified" in events and events[-1] == "finished"
    assert "jane" not in dump.lower()


async def test_rejection_ends_request_and_touches_nothing(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, time_skipping_env.client, orchestrator_db) as queue:
        _, handle = await _start(time_skipping_env, queue, RequestKind.ERASURE)
        await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        await handle.execute_update(
            DataSubjectRequestWorkflow.decide,
            Decision(actor="admin-acme", outcome="reject", reason="Account is under a legal hold"),
        )
        result = await handle.result()
    assert result.step == Step.REJECTED
    assert result.outcome_reason == "Account is under a legal hold"
    assert result.systems == {}
    assert (await _jane(fides_db))["email"] == "jane@example.com"


async def test_second_decision_is_refused(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, time_skipping_env.client, orchestrator_db) as queue:
        _, handle = await _start(time_skipping_env, queue, RequestKind.ACCESS)
        await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        await handle.execute_update(
            DataSubjectRequestWorkflow.decide, Decision(actor="a", outcome="reject", reason="duplicate request")
        )
        # Refused by the workflow while it runs, or by the server once the rejection has finished it: its
        # last steps are local activities, done in the decision's own workflow task.
        with pytest.raises((WorkflowUpdateFailedError, RPCError)) as refused:
            await handle.execute_update(DataSubjectRequestWorkflow.decide, Decision(actor="b", outcome="approve"))
        if isinstance(refused.value, RPCError):
            assert refused.value.status == RPCStatusCode.NOT_FOUND, refused.value
        result = await handle.result()
    assert result.step == Step.REJECTED
    assert result.decision is not None and result.decision.actor == "a"


async def test_other_tenant_cannot_decide(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, time_skipping_env.client, orchestrator_db) as queue:
        _, handle = await _start(time_skipping_env, queue, RequestKind.ERASURE)
        await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                DataSubjectRequestWorkflow.decide, Decision(actor="x", outcome="approve", tenant="globex")
            )
        status = await handle.query(DataSubjectRequestWorkflow.status)
        assert status.step == Step.AWAITING_APPROVAL and status.decision is None
        await handle.terminate("test over")


async def test_deadline_is_one_calendar_month_and_is_flagged_when_passed(
    time_skipping_env, fides_db, orchestrator_db, tmp_path
):
    settings = fides_settings(fides_db, tmp_path)
    received = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
    async with running_worker(settings, time_skipping_env.client, orchestrator_db) as queue:
        _, handle = await _start(time_skipping_env, queue, RequestKind.ACCESS, received_at=received)
        status = await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        # 31 January + one month = 28 February (no 31 February), to the end of that day.
        assert status.due_at.date() == datetime(2026, 2, 28).date()
        assert status.due_at.hour == 23
        assert not status.overdue
        # The received date lies in the past of the server clock, so the wait is already over: skip a little.
        await time_skipping_env.sleep(timedelta(seconds=5))
        status = await handle.query(DataSubjectRequestWorkflow.status)
        assert status.overdue and status.step == Step.AWAITING_APPROVAL
        await handle.terminate("test over")  # a waiting request left behind would hold the shared test clock


async def test_deadline_timer_fires_after_a_month(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, time_skipping_env.client, orchestrator_db) as queue:
        now = await time_skipping_env.get_current_time()
        quiet = RequestPolicy(reminder_every_days=30, escalate_days_before_due=0)  # only the deadline's timer
        _, handle = await _start(time_skipping_env, queue, RequestKind.ACCESS, received_at=now, policy=quiet)
        await _wait_for_step(handle, Step.AWAITING_APPROVAL)
        await time_skipping_env.sleep(timedelta(days=27))
        assert not (await handle.query(DataSubjectRequestWorkflow.status)).overdue
        await time_skipping_env.sleep(timedelta(days=5))
        status = await handle.query(DataSubjectRequestWorkflow.status)
        assert status.overdue
        # Overdue does not decide anything: the admin still can, and the request then runs.
        await handle.execute_update(DataSubjectRequestWorkflow.decide, Decision(actor="a", outcome="approve"))
        result = await handle.result()
    assert result.step == Step.COMPLETED and result.overdue


async def test_access_produces_bundle_with_manifest(time_skipping_env, fides_db, orchestrator_db, tmp_path, codec):
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, time_skipping_env.client, orchestrator_db) as queue:
        _, handle = await _start(time_skipping_env, queue, RequestKind.ACCESS, approval=False)
        result = await handle.result()
    assert result.step == Step.COMPLETED, result.outcome_reason
    assert result.bundle is not None
    bundle = Path(result.bundle.location)
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        rows = {f["collection"]: f["rows"] for f in manifest["files"] if f["format"] == "json"}
        customers = json.loads(zf.read("appdb/customer.json"))
    assert rows == {"customer": 1, "orders": 1, "login": 1, "payment_card": 1, "address": 1}
    assert customers[0]["email"] == "jane@example.com"
    assert result.systems["appdb"].exported == rows
    # The rows never travelled through Temporal: history holds only the bundle reference.
    history = await handle.fetch_history()
    results = [
        e.activity_task_completed_event_attributes.result.payloads
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    assert results
    for payloads in results:
        for p in await codec.decode(payloads):
            assert b"Jane Customer" not in p.data and b"Example Card" not in p.data
    # Nothing changed in the application database.
    assert (await _jane(fides_db))["email"] == "jane@example.com"
