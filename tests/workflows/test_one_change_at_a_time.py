"""One subject, one change at a time (issue 3.6), with the real request and dispute workflows on the dev server."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.helpers import HASH_SECRET_ENV, add_rights_columns, fides_settings, new_request
from workers.config import TemporalSettings
from workers.worker import request_worker
from workflows.messages import DisputeInput, DisputeResolution, DisputeStatus
from workflows.models import RequestDetails, RequestKind, Step, SubjectIdentities
from workflows.request import DataSubjectRequestWorkflow


def _subject_key() -> str:
    """A fresh coordinator per test: one left from another test would sit on that test's (gone) task queue."""
    return "".join("abcdefghijklmnopqrstuvwxyz234567"[b % 32] for b in uuid.uuid4().bytes * 2)


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


async def _windows(db: str, ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    """Per request: from its first system step to its end, as the audit trail recorded them."""
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            """SELECT request_id, min(at) FILTER (WHERE event = 'located') AS start,
                      max(at) FILTER (WHERE event = 'finished') AS stop
               FROM dsr_audit WHERE request_id = ANY($1::text[]) GROUP BY request_id""", ids)
    finally:
        await conn.close()
    return {r["request_id"]: (r["start"], r["stop"]) for r in rows}


async def test_concurrent_changes_to_one_subject_never_overlap(temporal_env, fides_db, orchestrator_db, tmp_path):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True,
                              temporal=TemporalSettings(task_queue="lock-" + uuid.uuid4().hex[:8]))
    client = temporal_env.client
    key = _subject_key()
    kinds = [
        (RequestKind.RECTIFICATION, RequestDetails(corrections={"user.name": "Jane Doe"})),
        (RequestKind.DEACTIVATION, RequestDetails()),
        (RequestKind.OPT_OUT, RequestDetails()),
    ]
    async with request_worker(settings, client, database_url=orchestrator_db) as worker, worker:
        reqs = [new_request(k, approval=False, details=d, subject_key=key) for k, d in kinds]
        handles = await asyncio.gather(*(
            client.start_workflow(DataSubjectRequestWorkflow.run, r, id=r.id, task_queue=settings.temporal.task_queue)
            for r in reqs
        ))
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    assert [r.step for r in results] == [Step.COMPLETED] * 3, [r.outcome_reason for r in results]
    windows = sorted((await _windows(orchestrator_db, [r.id for r in reqs])).values())
    assert len(windows) == 3
    for (_, first_end), (second_start, _) in itertools.pairwise(windows):
        assert first_end <= second_start, windows
    conn = await asyncpg.connect(fides_db)
    row = await conn.fetchrow("SELECT name, active, marketing_opt_in FROM customer WHERE id = 3")
    await conn.close()
    assert (row["name"], row["active"], row["marketing_opt_in"]) == ("Jane Doe", False, False)


async def test_erasure_waits_for_a_dispute_while_access_runs(temporal_env, fides_db, orchestrator_db, tmp_path):
    await add_rights_columns(fides_db)
    settings = fides_settings(fides_db, tmp_path, rights=True,
                              temporal=TemporalSettings(task_queue="dispute-" + uuid.uuid4().hex[:8]))
    client = temporal_env.client
    queue = settings.temporal.task_queue
    key = _subject_key()
    async with request_worker(settings, client, database_url=orchestrator_db) as worker, worker:
        dispute = DisputeInput(
            id="dsp_" + uuid.uuid4().hex, tenant="acme", identities=SubjectIdentities(email="jane@example.com"),
            subject_key=key, opened_by="admin-acme", grounds="accuracy contested",
            requested_kind=RequestKind.RECTIFICATION, details=RequestDetails(corrections={"user.name": "J. C."}),
            notice_days=0, opened_at=datetime.now(UTC),
        )
        dh = await client.start_workflow("DisputeWorkflow", dispute, id=dispute.id, task_queue=queue)
        for _ in range(100):
            if (await dh.query("status", result_type=DisputeStatus)).step == "restricted":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"dispute never restricted: {await dh.query('status', result_type=DisputeStatus)}")
        erasure = new_request(RequestKind.ERASURE, approval=False, subject_key=key)
        access = new_request(RequestKind.ACCESS, approval=False, subject_key=key)
        eh = await client.start_workflow(DataSubjectRequestWorkflow.run, erasure, id=erasure.id, task_queue=queue)
        ah = await client.start_workflow(DataSubjectRequestWorkflow.run, access, id=access.id, task_queue=queue)
        assert (await asyncio.wait_for(ah.result(), 60)).step == Step.COMPLETED
        await asyncio.sleep(1)
        assert (await eh.query(DataSubjectRequestWorkflow.status)).step == Step.AWAITING_SUBJECT
        conn = await asyncpg.connect(fides_db)
        assert await conn.fetchval("SELECT email FROM customer WHERE id = 3") == "jane@example.com"
        await dh.execute_update("resolve", DisputeResolution(actor="admin-acme", outcome="company_prevails",
                                                             reason="records are accurate"))
        result = await asyncio.wait_for(eh.result(), 60)
        assert result.step == Step.COMPLETED, result.outcome_reason
        assert await conn.fetchval("SELECT email FROM customer WHERE id = 3") != "jane@example.com"
        await conn.close()
