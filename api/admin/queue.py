"""The console's work queue: what waits for a person in the signed-in user's tenant, by due date.

Temporal's visibility lists the running workflows by type, status and task queue (no personal data in the
query); each one's memo names its tenant (as :mod:`api.tasks` does for manual tasks), and the tenant's
requests are queried for their status, a few at a time. A request that cannot answer now is listed as such
rather than failing the page.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client, WorkflowExecution
from temporalio.service import RPCError

from api.auth import Principal
from api.common import Resource, current_status, describe
from api.disputes import DISPUTES
from api.problems import Problem
from api.requests_routes import REQUESTS
from api.tasks import QUERY as TASKS_QUERY
from workers.config import Settings
from workflows.messages import DisputeStatus, DisputeStep
from workflows.models import RequestStatus, Step, SystemState

MAX_LISTED = 1000
"""At most this many running workflows of each type are looked at (oldest pages of a very large backlog wait)."""
PARALLEL_QUERIES = 16
APPROVAL_STEPS = frozenset({Step.AWAITING_APPROVAL, Step.OBJECTION_WINDOW})
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.:/-]+$")


def visibility_query(workflow_type: str, task_queue: str) -> str:
    """The visibility query for running workflows of ``workflow_type`` on this deployment's task queue."""
    query = f"WorkflowType = '{workflow_type}' AND ExecutionStatus = 'Running'"
    if _PLAIN_NAME.fullmatch(task_queue):  # a name that cannot break out of the quotes
        query += f" AND TaskQueue = '{task_queue}'"
    return query


def days_left(due_at: datetime, now: datetime) -> int:
    """Whole days until ``due_at`` (rounded up); negative once overdue."""
    return math.ceil((due_at - now).total_seconds() / 86400)


@dataclass(slots=True)
class ManualTask:
    """An open manual partner task (a running ``PartnerWaitWorkflow`` of a ``manual_task`` system)."""

    request_id: str
    system: str
    instructions: str | None
    contact: str | None
    waiting_since: datetime


@dataclass(slots=True)
class QueueItem:
    """A request that waits for a person, with why."""

    status: RequestStatus
    reasons: list[str]
    tasks: list[ManualTask] = field(default_factory=list)

    @property
    def days_left(self) -> int:
        """Days to the legal deadline (negative: overdue)."""
        return days_left(self.status.due_at, datetime.now(UTC))


@dataclass(slots=True)
class Queue:
    """Everything on the console's front page."""

    items: list[QueueItem]
    disputes: list[DisputeStatus]
    unreadable: list[str]
    """Ids of the tenant's requests whose status could not be read now."""


def _mine(principal: Principal, tenant: object) -> bool:
    return principal.tenant is None or tenant == principal.tenant


async def _tenant_executions(client: Client, query: str, principal: Principal) -> list[WorkflowExecution]:
    found = []
    async for execution in client.list_workflows(query, limit=MAX_LISTED):
        try:
            tenant = (await execution.memo()).get("tenant")
        except Exception:  # sealed with a retired key: its tenant is unknown, so it is nobody's to list
            tenant = None
        if isinstance(tenant, str) and _mine(principal, tenant):
            found.append(execution)
    return found


async def _status(client: Client, execution: WorkflowExecution, resource: Resource[Any],
                  limit: asyncio.Semaphore) -> Any | None:
    """The workflow's status as ``GET /v1/requests/{id}`` reads it (visibility's history length lags, so the
    workflow is described first); None when it cannot answer now."""
    async with limit:
        try:
            found = await describe(client, resource, execution.id)
            return None if found is None else await current_status(client, resource, found)
        except (Problem, RPCError):
            return None


async def open_manual_tasks(client: Client, settings: Settings, principal: Principal) -> list[ManualTask]:
    """The open manual tasks of the principal's tenant (as ``GET /v1/tasks`` lists them)."""
    manual = {name: cfg for name, cfg in settings.systems.items() if cfg.type == "manual_task"}
    if not manual:
        return []
    query = TASKS_QUERY
    if _PLAIN_NAME.fullmatch(settings.temporal.task_queue):
        query += f" AND TaskQueue = '{settings.temporal.task_queue}'"
    tasks = []
    for execution in await _tenant_executions(client, query, principal):
        request_id, _, system = execution.id.partition("/partner/")
        if system not in manual:
            continue
        options = manual[system].options()
        tasks.append(ManualTask(request_id=request_id, system=system, instructions=options.get("instructions"),
                                contact=options.get("contact"), waiting_since=execution.start_time))
    return tasks


async def build_queue(client: Client, settings: Settings, principal: Principal) -> Queue:
    """The requests awaiting approval or an objection, needing attention, or with an open manual task;
    and the open disputes waiting for a resolution. Requests by due date, soonest first."""
    queue = settings.temporal.task_queue
    limit = asyncio.Semaphore(PARALLEL_QUERIES)
    requests, disputes, tasks = await asyncio.gather(
        _tenant_executions(client, visibility_query(REQUESTS.workflow_type, queue), principal),
        _tenant_executions(client, visibility_query(DISPUTES.workflow_type, queue), principal),
        open_manual_tasks(client, settings, principal),
    )
    statuses = await asyncio.gather(
        *(_status(client, e, REQUESTS, limit) for e in requests))
    dispute_statuses = await asyncio.gather(
        *(_status(client, e, DISPUTES, limit) for e in disputes))

    tasks_of: dict[str, list[ManualTask]] = {}
    for task in tasks:
        tasks_of.setdefault(task.request_id, []).append(task)
    items, unreadable = [], []
    for execution, status in zip(requests, statuses, strict=True):
        if status is None:
            unreadable.append(execution.id)
            continue
        reasons = []
        if status.step == Step.AWAITING_APPROVAL:
            reasons.append("approval")
        elif status.step == Step.OBJECTION_WINDOW:
            reasons.append("objection window")
        if status.step == Step.NEEDS_ATTENTION or any(
                s.state == SystemState.NEEDS_ATTENTION for s in status.systems.values()):
            reasons.append("needs attention")
        if status.id in tasks_of:
            reasons.append("manual task")
        if reasons:
            items.append(QueueItem(status=status, reasons=reasons, tasks=tasks_of.get(status.id, [])))
    items.sort(key=lambda item: (item.status.due_at, item.status.received_at, item.status.id))
    open_disputes = sorted(
        (d for d in dispute_statuses if d is not None and d.step == DisputeStep.RESTRICTED),
        key=lambda d: d.opened_at,
    )
    return Queue(items=items, disputes=open_disputes, unreadable=sorted(unreadable))
