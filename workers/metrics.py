"""Prometheus metrics of the worker and the API, and the Temporal SDK's own metrics runtime.

Ours come from three hooks: the audit events the workflows record (an activity interceptor watches
``dsr.record_event``), the API's middleware, and a periodic count of open requests from Temporal visibility.
No label carries personal data or an unbounded value: tenants and systems are the configured names (anything
else is ``other``), kinds and outcomes are the code's own words, API routes are templates
(``/v1/requests/{id}``), never paths. Request ids appear in no metric.

| Metric                                        | Type      | Labels                          |
|-----------------------------------------------|-----------|---------------------------------|
| dsr_requests_started_total                    | counter   | tenant, kind                    |
| dsr_requests_finished_total                   | counter   | tenant, kind, outcome           |
| dsr_system_steps_total                        | counter   | tenant, system, step, outcome   |
| dsr_request_completion_seconds                | histogram | kind, outcome                   |
| dsr_open_requests                             | gauge     | tenant, kind, due_in            |
| dsr_open_requests_min_days_to_deadline        | gauge     | tenant, kind                    |
| dsr_api_requests_total                        | counter   | method, route, status           |
| dsr_api_request_duration_seconds              | histogram | method, route                   |
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from workers.config import Settings
from workflows.models import RequestKind, Step
from workflows.search import DSR_DUE_AT, DSR_KIND, DSR_TENANT
from workflows.tasks import AuditEvent

__all__ = [
    "API_REQUESTS",
    "API_SECONDS",
    "COMPLETION_SECONDS",
    "OPEN_MIN_DAYS",
    "OPEN_REQUESTS",
    "OTHER",
    "REQUESTS_FINISHED",
    "REQUESTS_STARTED",
    "SYSTEM_STEPS",
    "LabelPolicy",
    "MetricsInterceptor",
    "due_bucket",
    "metrics_response",
    "metrics_server",
    "observe_api_call",
    "refresh_open_requests",
    "render",
    "temporal_runtime",
]

log = structlog.get_logger("dsr.metrics")

OTHER = "other"
"""The label value of anything not configured (a tenant or system the configuration does not name)."""
_WORD = re.compile(r"[a-z][a-z_]{0,47}")
"""The shape of a code word (an event or outcome): letters and underscores only, so no id or email fits."""

DAY = 86400.0
COMPLETION_BUCKETS = (1, 10, 60, 600, 3600, 6 * 3600, DAY, 3 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 60 * DAY, 90 * DAY)
DUE_BUCKETS: tuple[tuple[float, str], ...] = ((0, "overdue"), (7, "0-7d"), (14, "7-14d"), (30, "14-30d"))
DUE_LATER = "30d+"

REQUESTS_STARTED = Counter("dsr_requests_started", "Requests received, by tenant and kind.", ["tenant", "kind"])
REQUESTS_FINISHED = Counter(
    "dsr_requests_finished", "Requests that reached their final step, by tenant, kind and outcome (the step).",
    ["tenant", "kind", "outcome"])
SYSTEM_STEPS = Counter(
    "dsr_system_steps", "Per-system steps recorded (located, exported, erased, verified, ..._failed), by outcome.",
    ["tenant", "system", "step", "outcome"])
COMPLETION_SECONDS = Histogram(
    "dsr_request_completion_seconds", "Time from receipt to the final step.", ["kind", "outcome"],
    buckets=COMPLETION_BUCKETS)
OPEN_REQUESTS = Gauge(
    "dsr_open_requests", "Open requests by days left to their legal deadline (overdue, 0-7d, 7-14d, 14-30d, 30d+).",
    ["tenant", "kind", "due_in"])
OPEN_MIN_DAYS = Gauge(
    "dsr_open_requests_min_days_to_deadline", "Days left to the nearest deadline among open requests (negative: late).",
    ["tenant", "kind"])
API_REQUESTS = Counter("dsr_api_requests", "API calls by route template and status.", ["method", "route", "status"])
API_SECONDS = Histogram("dsr_api_request_duration_seconds", "API call latency by route template.", ["method", "route"])

_KINDS = frozenset(k.value for k in RequestKind)
_STEPS = frozenset(s.value for s in Step)


class LabelPolicy:
    """Maps values to bounded label values: configured tenants and systems, the code's kinds and words.

    Args:
        settings: The configuration whose tenant and system names are the only ones that become labels.
    """

    def __init__(self, settings: Settings) -> None:
        self.tenants = frozenset(settings.tenants)
        self.systems = frozenset(settings.systems)

    def tenant(self, value: str | None) -> str:
        """The tenant's configured name, else ``other``."""
        return value if value in self.tenants else OTHER

    def system(self, value: str | None) -> str:
        """The system's configured name, else ``other``."""
        return value if value in self.systems else OTHER

    @staticmethod
    def kind(value: Any) -> str:
        """A request kind, else ``other``."""
        return value if isinstance(value, str) and value in _KINDS else OTHER

    @staticmethod
    def word(value: Any) -> str:
        """An event or outcome word of the code (letters and underscores), else ``other``."""
        return value if isinstance(value, str) and _WORD.fullmatch(value) else OTHER


class EventMetrics:
    """Turns audit events into metrics; the finished event finds its request's kind and receipt in the audit trail.

    Args:
        labels: The label policy.
        pool: The orchestrator's database (``dsr_audit``).
    """

    def __init__(self, labels: LabelPolicy, pool: asyncpg.Pool) -> None:
        self.labels = labels
        self.pool = pool

    async def observe(self, event: AuditEvent) -> None:
        """Count ``event``: a request received or finished, or a system's step."""
        tenant = self.labels.tenant(event.tenant)
        if event.system is not None:
            SYSTEM_STEPS.labels(tenant, self.labels.system(event.system), self.labels.word(event.event),
                                self.labels.word(event.outcome)).inc()
        elif event.event == "received":
            REQUESTS_STARTED.labels(tenant, self.labels.kind(event.detail.get("kind"))).inc()
        elif event.event == "finished":
            row = await self.pool.fetchrow(
                "SELECT detail->>'kind' AS kind, at FROM dsr_audit WHERE request_id = $1 AND event = 'received'"
                " ORDER BY id LIMIT 1", event.request_id)
            kind = self.labels.kind(row["kind"] if row else None)
            outcome = event.outcome if event.outcome in _STEPS else OTHER
            REQUESTS_FINISHED.labels(tenant, kind, outcome).inc()
            if row is not None:
                COMPLETION_SECONDS.labels(kind, outcome).observe(max(0.0, (event.at - row["at"]).total_seconds()))


def _request_id_of(args: Iterable[Any]) -> str | None:
    for arg in args:
        rid = getattr(arg, "request_id", None)
        if isinstance(rid, str):
            return rid
    return None


class _ActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, events: EventMetrics) -> None:
        super().__init__(next)
        self._events = events

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        # Every log event of the activity carries the opaque ids (an activity runs in its own task/context).
        bound: dict[str, str] = {"workflow_id": info.workflow_id or "", "activity": info.activity_type}
        request_id = _request_id_of(input.args)
        if request_id is not None:
            bound["request_id"] = request_id
        with structlog.contextvars.bound_contextvars(**bound):
            result = await super().execute_activity(input)
            if info.activity_type == "dsr.record_event" and input.args and isinstance(input.args[0], AuditEvent):
                try:
                    await self._events.observe(input.args[0])
                except Exception as exc:  # a metric never fails a step
                    log.warning("metrics.observe_failed", error_type=type(exc).__name__)
            return result


class MetricsInterceptor(Interceptor):
    """A worker interceptor: counts audit events, and binds the request id into every activity's log events.

    Args:
        settings: The configuration (the label policy's names).
        pool: The orchestrator's database.
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.events = EventMetrics(LabelPolicy(settings), pool)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap every activity."""
        return _ActivityInbound(next, self.events)


def due_bucket(days: float) -> str:
    """The ``due_in`` label of a request ``days`` before its deadline."""
    for upper, name in DUE_BUCKETS:
        if days < upper:
            return name
    return DUE_LATER


OPEN_REQUESTS_QUERY = "WorkflowType = 'DataSubjectRequestWorkflow' AND ExecutionStatus = 'Running'"
_open_keys: set[tuple[str, str, str]] = set()
_min_keys: set[tuple[str, str]] = set()


async def refresh_open_requests(client: Client, labels: LabelPolicy, *, now: datetime | None = None) -> int:
    """Count open requests by tenant, kind and days to deadline from visibility; returns how many are open.

    Label sets that have no open request any more are removed, so a drained queue reads as no series.
    """
    global _open_keys, _min_keys
    now = now or datetime.now(UTC)
    counts: dict[tuple[str, str, str], int] = {}
    nearest: dict[tuple[str, str], float] = {}
    total = 0
    async for execution in client.list_workflows(OPEN_REQUESTS_QUERY):
        attrs = execution.typed_search_attributes
        due_at = attrs.get(DSR_DUE_AT)
        if due_at is None:
            continue
        total += 1
        tenant, kind = labels.tenant(attrs.get(DSR_TENANT)), labels.kind(attrs.get(DSR_KIND))
        days = (due_at - now).total_seconds() / DAY
        key = (tenant, kind, due_bucket(days))
        counts[key] = counts.get(key, 0) + 1
        nearest[(tenant, kind)] = min(days, nearest.get((tenant, kind), days))
    for key, n in counts.items():
        OPEN_REQUESTS.labels(*key).set(n)
    for stale in _open_keys - counts.keys():
        OPEN_REQUESTS.remove(*stale)
    for pair, days in nearest.items():
        OPEN_MIN_DAYS.labels(*pair).set(round(days, 3))
    for stale_pair in _min_keys - nearest.keys():
        OPEN_MIN_DAYS.remove(*stale_pair)
    _open_keys, _min_keys = set(counts), set(nearest)
    return total


async def refresh_forever(client: Client, labels: LabelPolicy, every_seconds: float) -> None:
    """Call :func:`refresh_open_requests` every ``every_seconds`` until cancelled (failures are logged)."""
    while True:
        try:
            await refresh_open_requests(client, labels)
        except Exception as exc:  # visibility unavailable for a while: try again next time
            log.warning("metrics.refresh_failed", error_type=type(exc).__name__)
        await asyncio.sleep(every_seconds)


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return _generate_latest(registry)


def metrics_response(registry: CollectorRegistry = REGISTRY) -> web.Response:
    """An aiohttp response with the metrics, for ``GET /metrics``."""
    return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@asynccontextmanager
async def metrics_server(host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """Serve ``GET /metrics`` on ``host:port`` for the block's duration (the worker's scrape target)."""

    async def handler(_request: web.Request) -> web.Response:
        return metrics_response()

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("metrics.serving", host=host, port=port)
        yield runner
    finally:
        await runner.cleanup()


def observe_api_call(method: str, route: str, status: int, seconds: float) -> None:
    """Count one API call by method, route template (never the path) and status, and time it."""
    method = method if method in _METHODS else OTHER
    API_REQUESTS.labels(method, route, str(status)).inc()
    API_SECONDS.labels(method, route).observe(seconds)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_runtimes: dict[str, Runtime] = {}


def temporal_runtime(settings: Settings) -> Runtime | None:
    """The Temporal runtime exporting the SDK's metrics on ``metrics.temporal_port``; None (default) when unset.

    One per bind address per process: clients connected with the same settings share it. When the port is
    taken (a CLI command run next to the worker, with the worker's environment), the process goes on with the
    default runtime and a warning: metrics are never a reason not to run.
    """
    port = settings.metrics.temporal_port
    if port is None:
        return None
    address = f"{settings.metrics.host}:{port}"
    if address not in _runtimes:
        try:
            _runtimes[address] = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
                bind_address=address, counters_total_suffix=True, durations_as_seconds=True)))
        except ValueError as exc:  # "Failed starting Prometheus exporter: Address already in use"
            log.warning("metrics.temporal_port_unavailable", port=port, error=str(exc).splitlines()[0][:200])
            return None
    return _runtimes[address]
