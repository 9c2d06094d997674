"""The crypto-shredding activity: delete a request's export files, check they are gone, destroy its data key.

Idempotent: a retry finds no files and a key already destroyed, and records nothing twice (the audit record's
dedup key is the request and the event, whatever the time of the retry).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit import append_event
from activities.export_store import ExportStore
from workers.keys import DataKeyStore
from workflows.shredding import ShredOutcome, ShredTask
from workflows.tasks import AuditEvent

log = structlog.get_logger()


class ShreddingActivities:
    """Holds the export store, the data keys and the orchestrator database.

    Args:
        pool: The orchestrator database (the audit trail).
        store: The export store.
        keys: The per-request data keys; None when payloads use the master key only (nothing to destroy).
    """

    def __init__(self, pool: asyncpg.Pool, store: ExportStore, keys: DataKeyStore | None) -> None:
        self._pool = pool
        self._store = store
        self._keys = keys

    @activity.defn(name="dsr.shred_request")
    async def shred_request(self, task: ShredTask) -> ShredOutcome:
        """Delete the request's export files and verify, then destroy its data key, then record the evidence.

        Raises:
            ApplicationError: Files remain after the deletion (retried: the store may be catching up).
        """
        prefix = f"{task.request_id}/"
        deleted = await self._store.delete(prefix)
        remaining = await self._store.list(prefix)
        if remaining:
            raise ApplicationError(f"{len(remaining)} export files remain after deletion", type="ExportsRemain")
        destroyed = await self._keys.destroy(task.request_id) if self._keys is not None else False
        now = datetime.now(UTC)
        detail: dict[str, Any] = {
            "export_files_deleted": deleted,
            "export_files_remaining": 0,
            "data_key": "destroyed" if self._keys is not None else "none (payloads sealed with the master key)",
        }
        await append_event(self._pool, AuditEvent(
            request_id=task.request_id, tenant=task.tenant, event="shredded", outcome="ok", detail=detail,
            at=now,
        ), dedup_key=f"{task.request_id}|shredded")
        log.info("dsr_shredded", request_id=task.request_id, export_files_deleted=deleted, key_destroyed=destroyed)
        return ShredOutcome(bundle_files_deleted=deleted, key_destroyed=destroyed, shredded_at=now)

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for worker registration."""
        return [self.shred_request]
