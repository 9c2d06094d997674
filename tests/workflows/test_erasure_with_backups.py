"""An erasure across the application database and its S3 backups, through the request workflow (dev server)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import boto3
import pytest
from temporalio.service import RPCError

from tests.helpers import HASH_SECRET_ENV, fides_settings, new_request
from workers.config import SystemSettings, TemporalSettings
from workers.worker import request_worker
from workflows.backups import backup_expiry_workflow_id
from workflows.models import RequestKind, Step, SystemState
from workflows.request import DataSubjectRequestWorkflow


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "test-secret")


async def test_live_data_erased_backups_put_beyond_use_and_awaited(
    temporal_env, fides_db, orchestrator_db, tmp_path, s3_endpoint
):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = "backups-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    for name in ("monday", "tuesday"):
        s3.put_object(Bucket=bucket, Key=f"nightly/{name}.dump", Body=b"pg_dump output")
    settings = fides_settings(fides_db, tmp_path, temporal=TemporalSettings(task_queue="bk-" + uuid.uuid4().hex[:8]))
    settings.systems["backups"] = SystemSettings(type="s3_backups", bucket=bucket, prefix="nightly/",
                                                 endpoint_url=s3_endpoint, retention_days=35)
    client = temporal_env.client
    async with request_worker(settings, client, database_url=orchestrator_db) as worker, worker:
        req = new_request(RequestKind.ERASURE, approval=False)
        handle = await client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id,
                                             task_queue=settings.temporal.task_queue)
        for _ in range(200):
            status = await handle.query(DataSubjectRequestWorkflow.status)
            if status.systems.get("backups") and status.systems["backups"].state == SystemState.AWAITING_EXPIRY:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"backups never awaited: {status}")
        for _ in range(100):
            status = await handle.query(DataSubjectRequestWorkflow.status)
            if status.systems["appdb"].state == SystemState.DONE:
                break
            await asyncio.sleep(0.1)
        child_handle = client.get_workflow_handle(backup_expiry_workflow_id(req.id, "backups"))
        for _ in range(100):  # the state is set just before the child starts
            try:
                child = await child_handle.describe()
                break
            except RPCError:
                await asyncio.sleep(0.1)
        await handle.terminate("test over: the backups expire in 35 days")

    # Live data is erased now; the request stays open until the last backup copy is gone.
    assert status.step == Step.EXECUTING and status.systems["appdb"].state == SystemState.DONE
    backups = status.systems["backups"]
    assert backups.completes_at is not None
    assert timedelta(days=34) < backups.completes_at - req.received_at < timedelta(days=36)
    assert child.status.name == "RUNNING"
    conn = await asyncpg.connect(fides_db)
    assert await conn.fetchval("SELECT email FROM customer WHERE id = 3") != "jane@example.com"
    await conn.close()
    # Every backup is tagged beyond use; the ledger holds hashes, never the email.
    for name in ("monday", "tuesday"):
        tags = {t["Key"]: t["Value"] for t in
                s3.get_object_tagging(Bucket=bucket, Key=f"nightly/{name}.dump")["TagSet"]}
        assert tags.get("dsr-beyond-use") == "true"
    conn = await asyncpg.connect(orchestrator_db)
    ledger = [dict(r) for r in await conn.fetch("SELECT * FROM dsr_erasure_ledger WHERE request_id = $1", req.id)]
    told = await conn.fetchval("SELECT count(*) FROM dsr_outbox WHERE request_id = $1 AND kind = 'backups_pending'",
                               req.id)
    await conn.close()
    assert ledger and "jane" not in repr(ledger).lower()
    assert told == 1
