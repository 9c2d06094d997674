"""Confirmations of manual tasks, as the orchestrator recorded them: the ``task_confirmations`` service.

A person's confirmation of a manual task reaches the ``PartnerWaitWorkflow``, which records it as the audit event
``confirmed`` (with the actor and the time) in ``dsr_audit``. Attached to a connector (``Connector.attach``), this
service lets ``manual_task``'s ``verify_erasure`` see that record.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from activities.db import record_audit
from workflows.tasks import AuditEvent

EVENT = "confirmed"


class TaskConfirmations:
    """Reads (and, for tests and tools, writes) the ``confirmed`` audit events of manual tasks."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Use ``pool`` on the orchestrator database (tables created by ``activities.db.create_pool``)."""
        self._pool = pool

    async def confirmed(self, request_id: str, system: str) -> bool:
        """Whether a person confirmed the task of ``system`` for the request."""
        found = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM dsr_audit WHERE request_id = $1 AND system = $2 AND event = $3)",
            request_id, system, EVENT)
        return bool(found)

    async def confirm(self, request_id: str, system: str, actor: str, at: datetime, *,
                      tenant: str = "default") -> None:
        """Record that ``actor`` confirmed the task of ``system`` at ``at`` (as the partner wait does)."""
        await record_audit(self._pool, AuditEvent(request_id=request_id, tenant=tenant, event=EVENT, system=system,
                                                  actor=actor, at=at))
