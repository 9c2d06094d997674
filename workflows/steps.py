"""Per-system steps of a request, and its bookkeeping (audit, notifications, finishing).

A mixin of :class:`workflows.request.DataSubjectRequestWorkflow`, kept apart so that the
workflow's own module reads as the process. Deterministic: activities are called by name.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

from connectors.contract import ActionOutcome, ErasureOutcome, ExportOutcome, LocateOutcome, VerificationOutcome
from workflows.backups import BACKUP_EXPIRY_WORKFLOW, backup_expiry_workflow_id
from workflows.bookkeeping import AuditKeys, record_event, run_bookkeeping
from workflows.messages import Notification, NotificationKind, NotificationResult, Recipient
from workflows.models import KIND_CAPABILITY, DsrRequest, RequestKind, RequestStatus, Step, SystemState, SystemStatus
from workflows.partner import PARTNER_WAIT_WORKFLOW
from workflows.search import sync_request_attributes
from workflows.shredding import SHREDDING_WORKFLOW, ShredInput, shredding_workflow_id, summary_of
from workflows.tasks import (
    ActionTask,
    AuditEvent,
    BackupExpiryInput,
    PartnerWaitInput,
    RetrySettings,
    SystemInfo,
    SystemTask,
    partner_workflow_id,
)

T = TypeVar("T")
NON_RETRYABLE = ["ConfigurationError", "UnsupportedError", "ValidationError"]

# Short steps: a system that cannot answer after these attempts is reported, not waited on forever.
QUICK = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
        maximum_attempts=8,
        non_retryable_error_types=NON_RETRYABLE,
    ),
}
# Bulk steps (export, erasure): long, heartbeating, resumable from their last checkpoint.
BULK = {
    "start_to_close_timeout": timedelta(hours=6),
    "heartbeat_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=5),
        maximum_attempts=12,
        non_retryable_error_types=NON_RETRYABLE,
    ),
}

ACTIVITY_OF_KIND = {
    RequestKind.RECTIFICATION: "dsr.rectify",
    RequestKind.RESTRICTION: "dsr.restrict",
    RequestKind.OBJECTION: "dsr.stop_processing",
    RequestKind.OPT_OUT: "dsr.stop_processing",
    RequestKind.CONSENT_WITHDRAWAL: "dsr.stop_processing",
    RequestKind.DEACTIVATION: "dsr.deactivate",
}


def with_retry(options: dict[str, Any], retry: RetrySettings | None) -> dict[str, Any]:
    """``options`` with the system's own retry policy, when it has one (non-retryable types stay)."""
    if retry is None:
        return options
    return {**options, "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=retry.initial_interval_seconds),
        backoff_coefficient=retry.backoff_coefficient,
        maximum_interval=timedelta(seconds=retry.maximum_interval_seconds),
        maximum_attempts=retry.maximum_attempts,
        non_retryable_error_types=NON_RETRYABLE,
    )}


class RequestSteps:
    """What the request workflow does per system, and how it records and tells what it did."""

    @property
    def _quick(self) -> dict[str, Any]:
        """The short steps' options, with the request's timeout."""
        return {**QUICK, "start_to_close_timeout": timedelta(seconds=self._request.timeouts.quick_seconds)}

    @property
    def _bulk(self) -> dict[str, Any]:
        """The bulk steps' options, with the request's heartbeat timeout."""
        return {**BULK, "heartbeat_timeout": timedelta(seconds=self._request.timeouts.bulk_heartbeat_seconds)}

    _request: DsrRequest
    _status: RequestStatus
    _audit_keys: AuditKeys

    def _enter_step(self, step: Step) -> None:
        """Move the request to ``step``; visibility's ``DsrStep`` (and ``DsrDueAt``) follow (workflows.search)."""
        self._status.step = step
        sync_request_attributes(self._status)

    def _needed_capability(self) -> str:
        return KIND_CAPABILITY[self._request.kind]

    def _task(self, system: str) -> SystemTask:
        return SystemTask(request_id=self._request.id, system=system, identities=self._request.identities.as_dict())

    async def _on_system(self, system: SystemInfo, step: str, activity: str, result_type: type[T],
                         options: dict[str, Any]) -> T | None:
        """Run one system's activity; a failure after its retries marks that system failed, never the others."""
        try:
            return await workflow.execute_activity(
                activity, self._task(system.name), result_type=result_type, **with_retry(options, system.retry)
            )
        except ActivityError as err:
            await self._system_failed(self._status.systems[system.name], step, err)
            return None

    async def _run_system(self, system: SystemInfo, start: str = "locate") -> None:
        """One system's part, from ``start``: locate, then the kind's step (erasure: erase and verify).

        A step that keeps failing leaves the system in "needs attention" with ``failed_step`` set, so that an
        administrator's retry resumes exactly there (an erasure resumes its stored plan).
        """
        st = self._status.systems[system.name]
        if start == "locate" and not await self._locate(system):
            return
        if self._needed_capability() not in system.capabilities:
            st.state = SystemState.NOT_APPLICABLE
            return
        kind = self._request.kind
        if kind == RequestKind.ERASURE:
            if start in ("locate", "erase") and not await self._erase(system):
                return
            if st.completes_at is not None:
                await self._await_expiry(system)
            elif st.external is not None:
                await self._await_partner(system)
            else:
                await self._verify(system)
        elif kind in (RequestKind.ACCESS, RequestKind.EXPORT):
            await self._export(system)
        else:
            await self._act(system)

    async def _locate(self, system: SystemInfo) -> bool:
        out = await self._on_system(system, "locate", "dsr.locate", LocateOutcome, self._quick)
        if out is None:
            return False
        st = self._status.systems[system.name]
        st.found = out.found
        st.state = SystemState.LOCATED
        await self._audit("located", system=system.name, detail={"found": out.found})
        return True

    async def _export(self, system: SystemInfo) -> None:
        out = await self._on_system(system, "export", "dsr.export", ExportOutcome, self._bulk)
        if out is None:
            return
        st = self._status.systems[system.name]
        st.exported = out.exported
        st.part = out.part or None
        st.state = SystemState.DONE
        await self._audit("exported", system=system.name, detail={"exported": out.exported})

    async def _erase(self, system: SystemInfo) -> bool:
        out = await self._on_system(system, "erase", "dsr.erase", ErasureOutcome, self._bulk)
        if out is None:
            return False
        st = self._status.systems[system.name]
        st.masked, st.deleted, st.retained = out.masked, out.deleted, out.retained
        st.completes_at = out.completes_at
        st.external = out.external
        await self._audit(
            "erased", system=system.name,
            detail={"masked": out.masked, "deleted": out.deleted,
                    "retained": [r.model_dump() for r in out.retained]},
        )
        return True

    async def _await_expiry(self, system: SystemInfo) -> None:
        """Backups: tell the subject when the copies will be gone, wait durably in a child, then check they are."""
        st = self._status.systems[system.name]
        assert st.completes_at is not None
        st.state = SystemState.AWAITING_EXPIRY
        await self._notify(NotificationKind.BACKUPS_PENDING, facts={"gone_by": st.completes_at.isoformat()},
                           key=system.name)
        data = BackupExpiryInput(request_id=self._request.id, tenant=self._request.tenant, system=system.name,
                                 identities=self._request.identities.as_dict(), completes_at=st.completes_at)
        child_id = backup_expiry_workflow_id(self._request.id, system.name)
        if st.attempts > 1:  # an admin's retry waits in a new child
            child_id += f"/{st.attempts}"
        try:
            out = await workflow.execute_child_workflow(
                BACKUP_EXPIRY_WORKFLOW, data, result_type=VerificationOutcome, id=child_id,
            )
        except ChildWorkflowError as err:
            await self._system_failed(st, "verify", err)
            return
        await self._verified(system, out)

    async def _await_partner(self, system: SystemInfo) -> None:
        """Partners: wait durably in a child for their signed callback (or a poll); it reminds and escalates."""
        st = self._status.systems[system.name]
        assert st.external is not None
        st.state = SystemState.AWAITING_PARTNER
        data = PartnerWaitInput(request_id=self._request.id, tenant=self._request.tenant, system=system.name,
                                identities=self._request.identities.as_dict(), external=st.external)
        # No attempt suffix: the callback route signals exactly this id; a retry reuses it once the old one closed.
        try:
            out = await workflow.execute_child_workflow(
                PARTNER_WAIT_WORKFLOW, data, result_type=VerificationOutcome,
                id=partner_workflow_id(self._request.id, system.name),
                memo={"tenant": self._request.tenant},  # lets the API list a tenant's open manual tasks
            )
        except ChildWorkflowError as err:
            await self._system_failed(st, "verify", err)
            return
        await self._verified(system, out)

    async def _verify(self, system: SystemInfo) -> None:
        out = await self._on_system(system, "verify", "dsr.verify_erasure", VerificationOutcome, self._quick)
        if out is None:
            return
        await self._verified(system, out)

    async def _verified(self, system: SystemInfo, out: VerificationOutcome) -> None:
        st = self._status.systems[system.name]
        st.remaining = {k: v for k, v in out.remaining.items() if v}
        if st.remaining:
            st.state = SystemState.NEEDS_ATTENTION
            st.failed_step = "verify"
            st.error = "erasable data remains after erasure: " + ", ".join(
                f"{k} ({v})" for k, v in sorted(st.remaining.items())
            )
            await self._audit("verification_failed", system=system.name, outcome="failed",
                              detail={"remaining": st.remaining})
            return
        st.state = SystemState.DONE
        await self._audit("verified", system=system.name)

    async def _act(self, system: SystemInfo) -> None:
        """The kind's action on one system (rectify, restrict, stop processing, deactivate)."""
        st = self._status.systems[system.name]
        task = ActionTask(
            **self._task(system.name).model_dump(),
            corrections=self._request.details.corrections,
            purpose=self._request.purpose,
            reference=self._request.id,
        )
        kind = self._request.kind.value
        try:
            out = await workflow.execute_activity(
                ACTIVITY_OF_KIND[self._request.kind], task, result_type=ActionOutcome,
                **with_retry(self._quick, system.retry),
            )
        except ActivityError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.type == "UnsupportedError":
                st.state = SystemState.NOT_APPLICABLE
                st.error = err.cause.message
                await self._audit(f"{kind}_not_applicable", system=system.name)
                return
            await self._system_failed(st, "act", err)
            return
        st.changed, st.ignored = out.changed, out.ignored
        st.state = SystemState.DONE
        await self._audit(kind, system=system.name, detail={"changed": out.changed, "fields": out.fields,
                                                            "ignored": out.ignored})

    async def _notify(self, kind: NotificationKind, recipient: Recipient = Recipient.SUBJECT,
                      facts: dict[str, Any] | None = None, *, key: str | None = None) -> None:
        """Tell someone; a notifier that keeps failing is recorded, never fails the request."""
        note = Notification(
            request_id=self._request.id, tenant=self._request.tenant, kind=kind, recipient=recipient,
            request_kind=self._request.kind,
            identities=self._request.identities if recipient == Recipient.SUBJECT else None,
            facts=facts or {}, dedup_key=f"{self._request.id}:{kind.value}:{recipient.value}:{key or ''}",
        )
        try:
            await run_bookkeeping("dsr.notify", note, self._quick, result_type=NotificationResult)
        except ActivityError as err:
            await self._audit("notification_failed", outcome="failed",
                              detail={"kind": kind.value, "recipient": recipient.value,
                                      "error_type": getattr(err.cause, "type", None) or type(err.cause).__name__})

    async def _system_failed(self, st: SystemStatus, step: str, err: ActivityError | ChildWorkflowError) -> None:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        st.state = SystemState.NEEDS_ATTENTION
        st.failed_step = step
        st.error = f"{step}: {message}"
        await self._audit(f"{step}_failed", system=st.system, outcome="failed",
                          detail={"error_type": getattr(cause, "type", None) or type(cause).__name__})

    # --- bookkeeping --------------------------------------------------------------------

    async def _finish(self, step: Step, reason: str | None) -> RequestStatus:
        self._enter_step(step)
        self._status.outcome_reason = reason
        self._status.completed_at = workflow.now()
        await self._audit("finished", outcome=step.value)
        # An update handler may still be recording its evidence (an extension's audit event).
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._schedule_shredding()
        return self._status

    async def _schedule_shredding(self) -> None:
        """Start the request's crypto-shredding, which outlives this workflow (workflows/shredding.py)."""
        days = self._request.shred_after_days
        if days is None:
            return
        assert self._status.completed_at is not None
        data = ShredInput(request_id=self._request.id, tenant=self._request.tenant,
                          shred_at=self._status.completed_at + timedelta(days=days),
                          summary=summary_of(self._status))
        await workflow.start_child_workflow(
            SHREDDING_WORKFLOW, data, id=shredding_workflow_id(self._request.id),
            parent_close_policy=ParentClosePolicy.ABANDON, memo={"tenant": self._request.tenant},
        )

    async def _audit(self, event: str, *, system: str | None = None, outcome: str = "ok",
                     actor: str | None = None, detail: dict | None = None) -> None:
        await record_event(
            AuditEvent(request_id=self._request.id, tenant=self._request.tenant, event=event, system=system,
                       outcome=outcome, actor=actor, detail=detail or {}, at=workflow.now()),
            self._quick, self._audit_keys,
        )

