"""Timers of the administrator's side (policy 7.1): reminders, escalation, the objection window; and the notices."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from email import message_from_bytes

import asyncpg
import pytest
from temporalio.client import WorkflowUpdateFailedError

from tests.helpers import HASH_SECRET_ENV, add_rights_columns, fides_settings, new_request, running_worker
from workflows.models import RequestKind, RequestPolicy, Step
from workflows.request import DataSubjectRequestWorkflow
from workflows.updates import AdminObjection, Decision


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


async def _status(handle):
    return await handle.query(DataSubjectRequestWorkflow.status)


async def _until(handle, pred, tries: int = 200):
    for _ in range(tries):
        st = await _status(handle)
        if pred(st):
            return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition never held; last step {st.step}")


def _mails_for(smtp_sink, request_id: str) -> list:
    """Messages about one request (the request id is in every message's headers)."""
    out = []
    for env in smtp_sink.messages:
        msg = message_from_bytes(env.content)
        if request_id in msg.as_string():
            out.append(msg)
    return out


async def test_reminders_and_escalation_while_approval_is_pending(time_skipping_env, fides_db, orchestrator_db,
                                                                   tmp_path, smtp_sink):
    settings = fides_settings(fides_db, tmp_path)
    policy = RequestPolicy(reminder_every_days=3, escalate_days_before_due=7)
    env = time_skipping_env
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.ERASURE, received_at=await env.get_current_time(), policy=policy)
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        await _until(handle, lambda s: s.step == Step.AWAITING_APPROVAL)
        await env.sleep(timedelta(days=2))
        assert (await _status(handle)).reminders_sent == 0
        await env.sleep(timedelta(days=5))  # day 7: reminders on days 3 and 6
        st = await _status(handle)
        assert st.reminders_sent == 2 and st.escalated_at is None
        due = st.due_at
        await env.sleep(due - timedelta(days=6) - await env.get_current_time(handle))  # inside the last 7 days
        st = await _status(handle)
        assert st.escalated_at is not None and st.escalated_at >= due - timedelta(days=7)
        assert not st.overdue
        await handle.terminate("test over")
    await asyncio.sleep(0.2)
    mails = _mails_for(smtp_sink, req.id)
    to = [m["To"] for m in mails]
    assert to.count("admin@acme.example") >= 2
    assert "dpo@acme.example" in to
    assert "jane@example.com" in to  # the receipt


async def test_objection_within_the_window_stops_a_restriction(time_skipping_env, fides_db, orchestrator_db,
                                                              tmp_path, smtp_sink):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    policy = RequestPolicy(organisation_managed=True, objection_window_days=5)
    env = time_skipping_env
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.RESTRICTION, approval=False, received_at=await env.get_current_time(),
                          policy=policy)
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        await _until(handle, lambda s: s.step == Step.OBJECTION_WINDOW)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(DataSubjectRequestWorkflow.object,
                                        AdminObjection(actor="admin-globex", reason="x", tenant="globex"))
        await handle.execute_update(
            DataSubjectRequestWorkflow.object,
            AdminObjection(actor="admin-acme", reason="Contractual retention for the customer's audit", tenant="acme"),
        )
        result = await handle.result()
    assert result.step == Step.REJECTED
    assert result.objection is not None and result.objection.reason.startswith("Contractual")
    assert "objected" in (result.outcome_reason or "")
    conn = await asyncpg.connect(fides_db)
    flags = [r["processing_restricted"] for r in await conn.fetch("SELECT processing_restricted FROM customer")]
    await conn.close()
    assert not any(flags)
    await asyncio.sleep(0.2)
    rejection = [m for m in _mails_for(smtp_sink, req.id) if m["To"] == "jane@example.com"][-1]
    body = rejection.get_payload(decode=True).decode() if not rejection.is_multipart() else rejection.as_string()
    assert "Contractual retention" in body and "supervisory authority" in body.lower()


async def test_restriction_proceeds_when_the_window_closes(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    policy = RequestPolicy(organisation_managed=True, objection_window_days=5)
    env = time_skipping_env
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.RESTRICTION, approval=False, received_at=await env.get_current_time(),
                          policy=policy)
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        await _until(handle, lambda s: s.step == Step.OBJECTION_WINDOW)
        await env.sleep(timedelta(days=4))
        assert (await _status(handle)).step == Step.OBJECTION_WINDOW
        await env.sleep(timedelta(days=2))
        result = await _until(handle, lambda s: s.step == Step.RESTRICTED)
        with pytest.raises(WorkflowUpdateFailedError):  # too late: the window has closed
            await handle.execute_update(DataSubjectRequestWorkflow.object,
                                        AdminObjection(actor="admin-acme", reason="too late"))
        await handle.terminate("test over")
    assert result.objection is None
    conn = await asyncpg.connect(fides_db)
    rows = await conn.fetch("SELECT processing_restricted FROM customer ORDER BY id")
    flags = [r["processing_restricted"] for r in rows]
    await conn.close()
    assert flags == [False, False, True]


async def test_completion_notice_carries_a_signed_link(time_skipping_env, fides_db, orchestrator_db, tmp_path,
                                                       smtp_sink):
    settings = fides_settings(fides_db, tmp_path)
    env = time_skipping_env
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.ACCESS, received_at=await env.get_current_time())
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        await _until(handle, lambda s: s.step == Step.AWAITING_APPROVAL)
        await handle.execute_update(DataSubjectRequestWorkflow.decide, Decision(actor="a", outcome="approve"))
        result = await handle.result()
    assert result.step == Step.COMPLETED
    await asyncio.sleep(0.2)
    to_subject = [m.as_string() for m in _mails_for(smtp_sink, req.id) if m["To"] == "jane@example.com"]
    assert len(to_subject) == 2  # receipt, completion
    assert f"/v1/exports/{req.id}?expires=" in to_subject[-1] and "signature=" in to_subject[-1]
