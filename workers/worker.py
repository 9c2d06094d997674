"""The Temporal worker process: request workflows and their activities."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.db import create_pool
from activities.export_store import export_store_from
from activities.notify import NotifyActivities, notifier_from
from activities.requests import RequestActivities
from activities.shredding import ShreddingActivities
from workers.codec import AesGcmCodec
from workers.config import Settings
from workers.logs import configure_logging
from workers.metrics import LabelPolicy, MetricsInterceptor, metrics_server, refresh_forever
from workflows.backups import BackupExpiryWorkflow
from workflows.dispute import DisputeWorkflow
from workflows.partner import PartnerWaitWorkflow
from workflows.request import DataSubjectRequestWorkflow
from workflows.shredding import ShreddingWorkflow
from workflows.subject import SubjectWorkflow

PASSTHROUGH_MODULES = ("workflows.models", "workflows.messages", "workflows.tasks", "workflows.updates",
                       "connectors.contract", "email_validator", "idna")
"""Pure definitions (pydantic models, enums) imported once, outside the workflow sandbox, instead of into every
workflow's sandbox: a quarter less worker CPU per request and a third of the memory per cached workflow
(benchmarks/throughput.py, benchmarks/waiting.py). They hold no state a workflow could change; the last two
are what pydantic's EmailStr imports on first use."""
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
)

WORKFLOWS = [DataSubjectRequestWorkflow, DisputeWorkflow, SubjectWorkflow, BackupExpiryWorkflow, PartnerWaitWorkflow,
             ShreddingWorkflow]


@asynccontextmanager
async def request_worker(
    settings: Settings, client: Client, *, database_url: str, task_queue: str | None = None
) -> AsyncIterator[Worker]:
    """A configured (not yet running) worker, with its activities' resources opened and closed around it."""
    pool = await create_pool(database_url)
    store = export_store_from(settings)
    acts = RequestActivities(settings, pool, store)
    notify = NotifyActivities(settings, pool, notifier_from(settings))
    codec = client.data_converter.payload_codec
    shred = ShreddingActivities(pool, store, codec.store if isinstance(codec, AesGcmCodec) else None)
    try:
        yield Worker(
            client,
            task_queue=task_queue or settings.temporal.task_queue,
            workflows=WORKFLOWS,
            activities=acts.all() + notify.all() + shred.all(),
            max_cached_workflows=settings.worker.max_cached_workflows,
            max_concurrent_activities=settings.worker.max_concurrent_activities,
            max_concurrent_workflow_tasks=settings.worker.max_concurrent_workflow_tasks,
            workflow_runner=WORKFLOW_RUNNER,
            interceptors=[MetricsInterceptor(settings, pool)],  # audit events -> metrics; request ids in logs
        )
    finally:
        await acts.close()
        await pool.close()


async def run_worker(settings: Settings, client: Client, stop: asyncio.Event, *, database_url: str) -> None:
    """Run the worker until ``stop`` is set, then shut it down gracefully.

    With ``metrics.worker_port`` set it also serves ``GET /metrics`` there and counts open requests by
    deadline every ``metrics.deadline_refresh_seconds``.
    """
    configure_logging()
    async with contextlib.AsyncExitStack() as stack:
        m = settings.metrics
        if m.worker_port is not None:
            await stack.enter_async_context(metrics_server(m.host, m.worker_port))
            if m.deadline_refresh_seconds > 0:
                refresher = asyncio.create_task(refresh_forever(client, LabelPolicy(settings),
                                                                m.deadline_refresh_seconds))
                stack.callback(refresher.cancel)
        await _run_until_stopped(settings, client, stop, database_url)


async def _run_until_stopped(settings: Settings, client: Client, stop: asyncio.Event, database_url: str) -> None:
    async with request_worker(settings, client, database_url=database_url) as worker:
        run = asyncio.create_task(worker.run())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if run in done:
            stopper.cancel()
            run.result()  # surface the worker's failure
            return
        await worker.shutdown()
        await run
