"""A system that keeps failing needs attention; the others complete; an admin's retry resumes it alone."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from temporalio.client import WorkflowUpdateFailedError

from tests.helpers import HASH_SECRET_ENV, fides_settings, new_request, running_worker
from workers.config import SystemSettings
from workers.embedded import ensure_database
from workflows.models import RequestKind, Step, SystemState
from workflows.request import DataSubjectRequestWorkflow
from workflows.tasks import RetrySettings
from workflows.updates import SystemRetry


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


async def _until(handle, pred):
    for _ in range(400):
        st = await handle.query(DataSubjectRequestWorkflow.status)
        if pred(st):
            return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"never; last step {st.step}")


async def test_failing_system_needs_attention_and_retry_resumes_it(
    time_skipping_env, pg, fides_db, fides_template, orchestrator_db, tmp_path
):
    env = time_skipping_env
    settings = fides_settings(fides_db, tmp_path)
    # A second copy of the application whose database does not exist yet: every attempt fails.
    name = "not_yet_" + uuid.uuid4().hex[:12]
    missing = pg.url(name)
    options = settings.systems["appdb"].options() | {"dsn": missing}
    settings.systems["second"] = SystemSettings(type="postgres", **options)
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.ERASURE, approval=False, received_at=await env.get_current_time())
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        st = await _until(handle, lambda s: s.step == Step.NEEDS_ATTENTION)
        assert st.systems["appdb"].state == SystemState.DONE  # the healthy system completed meanwhile
        second = st.systems["second"]
        assert second.state == SystemState.NEEDS_ATTENTION and second.failed_step == "locate" and second.error

        with pytest.raises(WorkflowUpdateFailedError):  # only a system that needs attention can be retried
            await handle.execute_update(DataSubjectRequestWorkflow.retry_system,
                                        SystemRetry(actor="admin-acme", system="appdb"))
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(DataSubjectRequestWorkflow.retry_system,
                                        SystemRetry(actor="x", system="second", tenant="globex"))

        # The operator repairs the system (its database appears), then retries it alone.
        await ensure_database(pg.url(), name, template=fides_template)
        await handle.execute_update(DataSubjectRequestWorkflow.retry_system,
                                    SystemRetry(actor="admin-acme", system="second", tenant="acme"))
        result = await handle.result()

    assert result.step == Step.COMPLETED, result.outcome_reason
    assert result.systems["second"].state == SystemState.DONE and result.systems["second"].attempts == 2
    assert result.systems["appdb"].attempts == 1  # the healthy system was not run again
    for db in (fides_db, missing):
        conn = await asyncpg.connect(db)
        assert await conn.fetchval("SELECT email FROM customer WHERE id = 3") != "jane@example.com"
        await conn.close()


async def test_each_system_has_its_own_retry_policy(time_skipping_env, fides_db, orchestrator_db, tmp_path):
    env = time_skipping_env
    settings = fides_settings(fides_db, tmp_path)
    options = settings.systems["appdb"].options() | {"dsn": "postgresql://postgres@127.0.0.1:1/nowhere"}
    settings.systems["unreachable"] = SystemSettings(
        type="postgres", retry=RetrySettings(maximum_attempts=3, initial_interval_seconds=1), **options)
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.ACCESS, approval=False, received_at=await env.get_current_time())
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        st = await _until(handle, lambda s: s.step == Step.NEEDS_ATTENTION)
        history = await handle.fetch_history()
        await handle.terminate("test over")
    assert st.systems["appdb"].state == SystemState.DONE
    assert st.systems["unreachable"].state == SystemState.NEEDS_ATTENTION
    attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) == 3  # the unreachable system's locate, tried exactly as its own policy says
