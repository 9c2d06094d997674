"""Activities of the request workflow: thin wrappers that find the connector, call it, and record evidence."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.confirmations import TaskConfirmations
from activities.db import record_audit
from activities.export_store import BundleSink, ExportStore, build_bundle
from activities.ledger import ErasureLedger
from activities.plan_store import PgPlanStore
from connectors.contract import (
    ActionOutcome,
    Connector,
    ConnectorError,
    ErasureOutcome,
    ExportOutcome,
    LocateOutcome,
    Subject,
    VerificationOutcome,
)
from connectors.registry import build_connector
from workers.config import Settings
from workers.links import sign_export_link
from workflows.models import BundleRef
from workflows.tasks import ActionTask, AuditEvent, DeliverInput, SystemInfo, SystemTask

log = structlog.get_logger("dsr.activities")
T = TypeVar("T")


class RequestActivities:
    """Holds the connectors (opened once, reused), the export store and the orchestrator's pool."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, store: ExportStore) -> None:
        self._settings = settings
        self._pool = pool
        self._store = store
        self._ledger = ErasureLedger.for_settings(pool, settings)
        self._confirmations = TaskConfirmations(pool)
        self._connectors: dict[str, Connector] = {}
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Close every opened connector."""
        for c in self._connectors.values():
            await c.close()
        self._connectors.clear()

    async def _connector(self, system: str) -> Connector:
        async with self._lock:
            if system not in self._connectors:
                cfg = self._settings.systems.get(system)
                if cfg is None:
                    raise ApplicationError(f"system {system!r} is not configured", type="ConfigurationError",
                                           non_retryable=True)
                conn = build_connector(system, cfg.type, cfg.options())
                conn.attach({"erasure_ledger": self._ledger, "task_confirmations": self._confirmations})
                await conn.open()
                self._connectors[system] = conn
            return self._connectors[system]

    async def _call(self, system: str, op: str, fn: Callable[[Connector], Awaitable[T]]) -> T:
        """Run ``fn`` on the system's connector, turning connector errors into typed Temporal failures."""
        try:
            connector = await self._connector(system)
            return await fn(connector)
        except ConnectorError as err:
            log.warning("connector_error", system=system, op=op, error_type=type(err).__name__,
                        retryable=err.retryable)
            raise ApplicationError(str(err), type=type(err).__name__, non_retryable=not err.retryable) from None

    @activity.defn(name="dsr.list_systems")
    async def list_systems(self, tenant: str) -> list[SystemInfo]:
        """The systems configured for ``tenant``, with their capabilities."""
        out = []
        for name, cfg in self._settings.systems_for(tenant).items():
            try:
                capabilities = (await self._connector(name)).capabilities
            except Exception as err:  # an unreachable system is listed anyway: its locate step will need attention
                log.warning("system_unavailable", system=name, error_type=type(err).__name__)
                try:
                    capabilities = build_connector(name, cfg.type, cfg.options()).capabilities
                except Exception:
                    capabilities = frozenset()
            out.append(SystemInfo(name=name, type=cfg.type, capabilities=sorted(c.value for c in capabilities),
                                  retry=cfg.retry))
        return out

    @activity.defn(name="dsr.locate")
    async def locate(self, task: SystemTask) -> LocateOutcome:
        """Count what a system holds for the subject."""
        subject = Subject(request_id=task.request_id, identities=task.identities)
        return await self._call(task.system, "locate", lambda c: c.locate(subject))

    @activity.defn(name="dsr.export")
    async def export(self, task: SystemTask) -> ExportOutcome:
        """Stream the subject's data into files in the export store; return only their reference."""
        subject = Subject(request_id=task.request_id, identities=task.identities)
        part = f"{task.request_id}/parts/{task.system}"
        with tempfile.TemporaryDirectory(prefix="dsr-export-") as tmp:
            sink = BundleSink(Path(tmp))
            await self._call(task.system, "export", lambda c: c.export(subject, sink))
            for f in sink.files:
                await self._store.put(f"{part}/{f.name}", Path(tmp) / f.name)
                activity.heartbeat({"uploaded": f.name})
        return ExportOutcome(exported=sink.exported, files=sink.files, part=part)

    @activity.defn(name="dsr.erase")
    async def erase(self, task: SystemTask) -> ErasureOutcome:
        """Erase in batches following a stored plan; a retry after a crash resumes where it stopped."""
        subject = Subject(request_id=task.request_id, identities=task.identities)
        plan = PgPlanStore(self._pool, task.request_id, task.system)

        def progress(detail: Mapping[str, Any]) -> None:
            activity.heartbeat(dict(detail))

        return await self._call(task.system, "erase", lambda c: c.erase(subject, plan, progress))

    @activity.defn(name="dsr.verify_erasure")
    async def verify_erasure(self, task: SystemTask) -> VerificationOutcome:
        """Look again after the erasure and report what remains."""
        subject = Subject(request_id=task.request_id, identities=task.identities)
        plan = PgPlanStore(self._pool, task.request_id, task.system)
        return await self._call(task.system, "verify", lambda c: c.verify_erasure(subject, plan))

    @activity.defn(name="dsr.rectify")
    async def rectify(self, task: ActionTask) -> ActionOutcome:
        """Apply the request's corrections to the system's declared fields."""
        return await self._call(task.system, "rectify", lambda c: c.rectify(_subject(task), task.corrections))

    @activity.defn(name="dsr.restrict")
    async def restrict(self, task: ActionTask) -> ActionOutcome:
        """Flag the subject's data as restricted, under ``task.reference``."""
        return await self._call(task.system, "restrict", lambda c: c.restrict(_subject(task), task.reference))

    @activity.defn(name="dsr.lift_restriction")
    async def lift_restriction(self, task: ActionTask) -> ActionOutcome:
        """Remove the restriction placed under ``task.reference``."""
        return await self._call(task.system, "lift", lambda c: c.lift_restriction(_subject(task), task.reference))

    @activity.defn(name="dsr.stop_processing")
    async def stop_processing(self, task: ActionTask) -> ActionOutcome:
        """Stop processing for the named purpose."""
        if not task.purpose:
            raise ApplicationError("no purpose named", type="ValidationError", non_retryable=True)
        purpose = task.purpose
        return await self._call(task.system, "stop_processing", lambda c: c.stop_processing(_subject(task), purpose))

    @activity.defn(name="dsr.deactivate")
    async def deactivate(self, task: ActionTask) -> ActionOutcome:
        """Make the account stop working; nothing is deleted."""
        return await self._call(task.system, "deactivate", lambda c: c.deactivate(_subject(task)))

    @activity.defn(name="dsr.deliver")
    async def deliver(self, data: DeliverInput) -> BundleRef:
        """Zip the exported parts with a manifest into the request's bundle."""
        key, sha, size, files = await build_bundle(self._store, data.request_id, data.parts)
        return BundleRef(key=key, sha256=sha, bytes=size, files=files, location=self._store.location(key))

    @activity.defn(name="dsr.export_link")
    async def export_link(self, request_id: str) -> str:
        """A signed, short-lived download link for the request's bundle."""
        expires = datetime.now(UTC) + timedelta(seconds=self._settings.export.link_ttl_seconds)
        return sign_export_link(self._settings, request_id, expires)

    @activity.defn(name="dsr.record_event")
    async def record_event(self, event: AuditEvent) -> None:
        """Append an audit record (no personal data: references, counts, outcomes)."""
        await record_audit(self._pool, event)
        log.info("dsr_event", request_id=event.request_id, tenant=event.tenant, dsr_event=event.event,
                 system=event.system, outcome=event.outcome)

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for worker registration."""
        return [self.list_systems, self.locate, self.export, self.erase, self.verify_erasure, self.deliver,
                self.record_event, self.export_link, self.rectify, self.restrict, self.lift_restriction,
                self.stop_processing, self.deactivate]


def _subject(task: SystemTask) -> Subject:
    return Subject(request_id=task.request_id, identities=task.identities)
