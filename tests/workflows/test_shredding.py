"""Per-request data keys and crypto-shredding, with the real worker, Fides' example and a real key store.

The request runs on a time-skipping test server whose client seals payloads with per-request data keys kept
in the orchestrator database. Thirty days after it completes, its shredding workflow deletes the export
bundle and destroys the data key: the request's history no longer decodes, the status answers the
non-personal summary, and the evidence trail records it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from api.common import QUERY_TIMEOUT, current_status, find_for_tenant
from api.disputes import DISPUTES
from api.ids import new_dispute_id, new_request_id
from api.problems import Problem
from api.requests_routes import REQUESTS
from tests.conftest import TEST_CODEC_KEY, tool
from tests.helpers import HASH_SECRET_ENV, fides_settings, new_request, running_worker
from tests.workflows.test_dispute import new_subject_key
from workers.codec import SCOPE_META, AesGcmCodec, data_converter
from workers.keys import DataKeyStore, KeyShreddedError, LocalKeyProvider
from workflows.dispute import DisputeWorkflow
from workflows.messages import DisputeInput, DisputeResolution, DisputeStatus, DisputeStep
from workflows.models import RequestKind, RequestStatus, Step, SubjectIdentities
from workflows.request import DataSubjectRequestWorkflow
from workflows.shredding import REMOVED, ShreddingWorkflow, ShredInput, shredding_workflow_id
from workflows.updates import Decision


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


@pytest.fixture
async def keyed_env(orchestrator_db: str) -> AsyncIterator[tuple[WorkflowEnvironment, DataKeyStore]]:
    """A time-skipping server whose client seals each request with its own data key."""
    store = DataKeyStore(orchestrator_db, LocalKeyProvider([TEST_CODEC_KEY]))
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(AesGcmCodec([TEST_CODEC_KEY], store=store)),
        test_server_existing_path=tool("temporal-test-server"),
    )
    try:
        yield env, store
    finally:
        await env.shutdown()
        await store.close()


async def _until_step(handle, step: Step) -> None:
    for _ in range(300):
        if (await handle.query(DataSubjectRequestWorkflow.status)).step == step:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {step}")


async def _until_completed(handle) -> None:
    """Wait until the workflow has closed, and check that it completed."""
    for _ in range(600):
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(0.05)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def _result_skipping_time(handle) -> RequestStatus:
    """The workflow's result; the test server may end a long poll before the result exists, so ask again."""
    for _ in range(3):
        try:
            return await asyncio.wait_for(handle.result(), timeout=60)
        except RuntimeError as exc:  # "No completion event found": the long poll ended first
            last = exc
    raise AssertionError(f"no result: {last}")


async def test_a_completed_request_is_shredded(keyed_env, fides_db, orchestrator_db, tmp_path):
    """The whole path, with a shredding period of 0 days (the wait itself is the next test's: the test server
    stops skipping time once a parent has closed before its abandoned child)."""
    env, store = keyed_env
    settings = fides_settings(fides_db, tmp_path)
    exports = tmp_path / "exports"
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        req = new_request(RequestKind.ACCESS, received_at=await env.get_current_time(), shred_after_days=0)
        req = req.model_copy(update={"id": new_request_id()})  # an id the API accepts
        handle = await env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
        await _until_step(handle, Step.AWAITING_APPROVAL)
        await handle.execute_update(DataSubjectRequestWorkflow.decide,
                                    Decision(actor="admin-acme", outcome="approve", reason="Jane Doe asked nicely"))
        # With a period of 0 days the request is shredded as soon as it ends: its own result may already be
        # unreadable, so everything is read from the summary the shredding keeps.
        await _until_completed(handle)

        # Every payload of the request names its scope: sealed with the request's own key.
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        assert started.input.payloads[0].metadata[SCOPE_META] == req.id.encode()

        shred = env.client.get_workflow_handle(shredding_workflow_id(req.id), result_type=RequestStatus)
        summary = await _result_skipping_time(shred)

    # The bundle and the parts are gone, the key is destroyed, the evidence says so.
    assert not (exports / req.id).exists() or not any((exports / req.id).rglob("*"))
    assert await store.is_destroyed(req.id)
    conn = await asyncpg.connect(orchestrator_db)
    try:
        rows = await conn.fetch("SELECT detail::text AS d FROM dsr_audit WHERE request_id = $1 AND event = 'shredded'",
                                req.id)
    finally:
        await conn.close()
    assert len(rows) == 1 and '"data_key": "destroyed"' in rows[0]["d"]
    assert summary.bundle is not None and summary.bundle.location == "(deleted)"
    assert json.loads(rows[0]["d"])["export_files_deleted"] == summary.bundle.files + 1  # the parts and the zip

    # The summary keeps the facts, not the free text.
    assert summary.id == req.id and summary.step == Step.COMPLETED and summary.shredded_at is not None
    assert summary.decision is not None and summary.decision.reason == REMOVED
    assert summary.systems["appdb"].found["customer"] == 1
    assert "Jane" not in summary.model_dump_json()

    # Nobody can decode the request's history any more, not even with the master key and the store.
    with pytest.raises(KeyShreddedError):
        await handle.result(rpc_timeout=QUERY_TIMEOUT)
    codec = AesGcmCodec([TEST_CODEC_KEY], store=DataKeyStore(orchestrator_db, LocalKeyProvider([TEST_CODEC_KEY])))
    with pytest.raises(KeyShreddedError):
        await codec.decode([started.input.payloads[0]])
    await codec.store.close()
    # The API answers the request's status with the summary, and still knows whose request it is.
    found, answered = await find_for_tenant(env.client, REQUESTS, req.id, "acme")
    answered = answered or await current_status(env.client, REQUESTS, found)
    assert answered.shredded_at == summary.shredded_at and answered.decision.reason == REMOVED
    with pytest.raises(Problem) as refused:
        await find_for_tenant(env.client, REQUESTS, req.id, "globex")
    assert refused.value.status == 404
    # And nothing new can be sealed for it.
    with pytest.raises(KeyShreddedError):
        await store.current(req.id)


async def test_shredding_waits_for_its_period(keyed_env, orchestrator_db, tmp_path):
    env, store = keyed_env
    settings = fides_settings("postgresql://unused/none", tmp_path)
    now = await env.get_current_time()
    summary = RequestStatus(id="req_waits", tenant="acme", kind=RequestKind.ERASURE, step=Step.COMPLETED,
                            received_at=now, due_at=now + timedelta(days=30), completed_at=now)
    await store.current("req_waits")  # the request had sealed something
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        handle = await env.client.start_workflow(
            ShreddingWorkflow.run,
            ShredInput(request_id="req_waits", tenant="acme", shred_at=now + timedelta(days=30), summary=summary),
            id=shredding_workflow_id("req_waits"), task_queue=queue)
        assert not await store.is_destroyed("req_waits")
        result = await _result_skipping_time(handle)
        assert await env.get_current_time() >= now + timedelta(days=30)
    assert result.shredded_at is not None
    assert await store.is_destroyed("req_waits")


async def test_a_closed_dispute_is_shredded(keyed_env, fides_db, orchestrator_db, tmp_path):
    """A dispute's history holds the subject's identities and the grounds: it is shredded when it closes too."""
    env, store = keyed_env
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, env.client, orchestrator_db) as queue:
        dispute = DisputeInput(
            id=new_dispute_id(), tenant="acme", identities=SubjectIdentities(email="jane@example.com"),
            subject_key=new_subject_key(), opened_by="support-agent-7", grounds="Jane Doe contests the lawfulness",
            requested_kind=RequestKind.ERASURE, notice_days=0, opened_at=await env.get_current_time(),
            shred_after_days=0,
        )
        handle = await env.client.start_workflow(DisputeWorkflow.run, dispute, id=dispute.id, task_queue=queue)
        for _ in range(300):
            if (await handle.query(DisputeWorkflow.status)).step == DisputeStep.RESTRICTED:
                break
            await asyncio.sleep(0.05)
        await handle.execute_update(DisputeWorkflow.resolve, DisputeResolution(
            actor="admin-acme", outcome="company_prevails", reason="Jane Doe signed the contract"))
        await _until_completed(handle)  # it lifts after its (0-day) notice, closes, starts its shredding
        shred = env.client.get_workflow_handle(shredding_workflow_id(dispute.id), result_type=DisputeStatus)
        summary = await _result_skipping_time(shred)

    assert await store.is_destroyed(dispute.id)
    assert summary.id == dispute.id and summary.step == DisputeStep.CLOSED and summary.shredded_at is not None
    assert summary.resolution is not None and summary.resolution.outcome == "company_prevails"
    assert summary.resolution.reason == REMOVED and summary.lifted_at is not None
    assert "Jane" not in summary.model_dump_json() and "jane" not in summary.model_dump_json()
    with pytest.raises(KeyShreddedError):
        await handle.result(rpc_timeout=QUERY_TIMEOUT)
    conn = await asyncpg.connect(orchestrator_db)
    try:
        events = await conn.fetchval("SELECT count(*) FROM dsr_audit WHERE request_id = $1 AND event = 'shredded'",
                                     dispute.id)
    finally:
        await conn.close()
    assert events == 1
    # The API answers the dispute's status with the summary, to its own tenant only.
    found, answered = await find_for_tenant(env.client, DISPUTES, dispute.id, "acme")
    answered = answered or await current_status(env.client, DISPUTES, found)
    assert answered == summary
    with pytest.raises(Problem) as refused:
        await find_for_tenant(env.client, DISPUTES, dispute.id, "globex")
    assert refused.value.status == 404
