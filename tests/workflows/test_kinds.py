"""Every request kind end to end through the workflow, against Fides' example database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from temporalio.client import WorkflowUpdateFailedError

from tests.helpers import HASH_SECRET_ENV, add_rights_columns, fides_settings, new_request, running_worker
from workers.config import SystemSettings
from workflows.models import RequestDetails, RequestKind, RequestPolicy, Step, SystemState
from workflows.request import DataSubjectRequestWorkflow
from workflows.updates import Lifting


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


async def _run(env, settings, orchestrator_db, kind: RequestKind, details: RequestDetails | None = None):
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(kind, approval=False, received_at=await env.get_current_time(),
                          details=details or RequestDetails())
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        return req, await handle.result()


async def _fetch(db: str, sql: str, *args):
    conn = await asyncpg.connect(db)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _counts(db: str) -> dict[str, int]:
    tables = ["customer", "orders", "login", "payment_card", "address", "employee", "visit", "service_request"]
    return {t: (await _fetch(db, f"SELECT count(*) AS n FROM {t}"))[0]["n"] for t in tables}


async def test_rectification_corrects_declared_fields_only(time_skipping_env, fides_db, orchestrator_db, tmp_path,
                                                           smtp_sink):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    _, result = await _run(time_skipping_env, settings, orchestrator_db, RequestKind.RECTIFICATION,
                           RequestDetails(corrections={"user.name": "Jane Doe", "user.political_opinion": "x"}))
    assert result.step == Step.COMPLETED, result.outcome_reason
    appdb = result.systems["appdb"]
    assert appdb.changed == {"customer": 1}
    assert "user.political_opinion" in appdb.ignored
    rows = await _fetch(fides_db, "SELECT id, name FROM customer ORDER BY id")
    assert [r["name"] for r in rows] == ["John Customer", "Jill Customer", "Jane Doe"]
    assert (await _fetch(fides_db, "SELECT name FROM employee WHERE id = 2"))[0]["name"] == "Jane Employee"


async def test_restriction_stays_until_lifted_after_notice(time_skipping_env, fides_db, orchestrator_db, tmp_path,
                                                            smtp_sink):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    env = time_skipping_env

    async def flags() -> list[bool]:
        rows = await _fetch(fides_db, "SELECT processing_restricted FROM customer ORDER BY id")
        return [r["processing_restricted"] for r in rows]

    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.RESTRICTION, approval=False, received_at=await env.get_current_time(),
                          details=RequestDetails(grounds="I contest the accuracy of my address"),
                          policy=RequestPolicy(lift_notice_days=10, reminder_every_days=30))
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        for _ in range(200):
            status = await handle.query(DataSubjectRequestWorkflow.status)
            if status.step == Step.RESTRICTED:
                break
            await asyncio.sleep(0.05)
        assert status.step == Step.RESTRICTED and status.systems["appdb"].state == SystemState.DONE
        assert await flags() == [False, False, True]
        tagged = await _fetch(fides_db, "SELECT DISTINCT collection FROM dsr_restriction WHERE reference = $1", req.id)
        assert {"customer", "orders", "login", "payment_card"} <= {r["collection"] for r in tagged}
        await env.sleep(timedelta(days=40))  # a restriction has no end of its own
        assert (await handle.query(DataSubjectRequestWorkflow.status)).step == Step.RESTRICTED

        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(DataSubjectRequestWorkflow.lift,
                                        Lifting(actor="admin-globex", reason="x", tenant="globex"))
        recorded = await handle.execute_update(
            DataSubjectRequestWorkflow.lift, Lifting(actor="admin-acme", reason="address verified", tenant="acme"))
        assert recorded.lift_on - recorded.decided_at == timedelta(days=10)
        await env.sleep(timedelta(days=9))
        assert await flags() == [False, False, True]  # told first; still restricted during the notice
        result = await handle.result()
    assert result.step == Step.COMPLETED and result.lifted_at is not None and result.lifted_at >= recorded.lift_on
    assert await flags() == [False, False, False]
    assert not await _fetch(fides_db, "SELECT 1 FROM dsr_restriction WHERE reference = $1", req.id)
    conn = await asyncpg.connect(orchestrator_db)
    sent = [r["kind"] for r in await conn.fetch(
        "SELECT kind FROM dsr_outbox WHERE request_id = $1 AND recipient_role = 'subject' ORDER BY id", req.id)]
    await conn.close()
    assert sent[-3:] == ["restriction_applied", "restriction_lift_notice", "restriction_lifted"]


@pytest.mark.parametrize(
    ("kind", "details"),
    [
        (RequestKind.OPT_OUT, RequestDetails()),
        (RequestKind.OBJECTION, RequestDetails(purpose="marketing", grounds="no more newsletters")),
        (RequestKind.CONSENT_WITHDRAWAL, RequestDetails(purpose="marketing")),
    ],
)
async def test_stopping_marketing(time_skipping_env, fides_db, orchestrator_db, tmp_path, smtp_sink, kind, details):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    _, result = await _run(time_skipping_env, settings, orchestrator_db, kind, details)
    assert result.step == Step.COMPLETED, result.outcome_reason
    rows = await _fetch(fides_db, "SELECT marketing_opt_in FROM customer ORDER BY id")
    assert [r["marketing_opt_in"] for r in rows] == [True, True, False]


async def test_unknown_purpose_is_not_applicable_never_skipped(time_skipping_env, fides_db, orchestrator_db, tmp_path,
                                                               smtp_sink):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    _, result = await _run(time_skipping_env, settings, orchestrator_db, RequestKind.CONSENT_WITHDRAWAL,
                           RequestDetails(purpose="profiling"))
    assert result.step == Step.COMPLETED
    assert result.systems["appdb"].state == SystemState.NOT_APPLICABLE
    assert "profiling" in (result.systems["appdb"].error or "")
    rows = await _fetch(fides_db, "SELECT marketing_opt_in FROM customer ORDER BY id")
    assert [r["marketing_opt_in"] for r in rows] == [True, True, True]


async def test_deactivation_stops_the_account_and_deletes_nothing(time_skipping_env, fides_db, orchestrator_db,
                                                                  tmp_path, smtp_sink):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    before = await _counts(fides_db)
    _, result = await _run(time_skipping_env, settings, orchestrator_db, RequestKind.DEACTIVATION)
    assert result.step == Step.COMPLETED, result.outcome_reason
    assert await _counts(fides_db) == before
    rows = await _fetch(fides_db, "SELECT active, email FROM customer ORDER BY id")
    assert [r["active"] for r in rows] == [True, True, False]
    assert rows[2]["email"] == "jane@example.com"


async def test_a_system_without_the_capability_is_reported_not_applicable(time_skipping_env, fides_db,
                                                                          orchestrator_db, tmp_path, smtp_sink):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True)
    plain = settings.systems["appdb"].options()
    for key in ("deactivation", "purposes", "restriction"):
        plain.pop(key, None)
    settings.systems["plain"] = SystemSettings(type="postgres", **plain)
    _, result = await _run(time_skipping_env, settings, orchestrator_db, RequestKind.DEACTIVATION)
    assert result.step == Step.COMPLETED
    assert result.systems["appdb"].state == SystemState.DONE
    assert result.systems["plain"].state == SystemState.NOT_APPLICABLE
