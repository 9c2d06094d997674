"""The life of one data subject request, from receipt to a verified outcome.

Receive → identity gate → approval gate → locate → execute per system → verify → deliver → done.
Until execution starts the subject may cancel; while the request runs an administrator may extend
its deadline once. The rules of those gates live in ``workflows.gates``.
Deterministic orchestration only: every side effect is an activity, called by
name so that this module never imports an implementation.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from connectors.contract import ErasureOutcome, ExportOutcome, LocateOutcome, VerificationOutcome
from workflows import gates
from workflows.models import (
    AuditEvent,
    BundleRef,
    Cancellation,
    Decision,
    DeliverInput,
    DsrRequest,
    Extension,
    RecordedCancellation,
    RecordedDecision,
    RecordedExtension,
    RecordedVerification,
    RequestKind,
    RequestStatus,
    Step,
    SystemInfo,
    SystemState,
    SystemStatus,
    SystemTask,
    Verification,
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

MUTATING_CAPABILITY = {RequestKind.ERASURE: "erase", RequestKind.ACCESS: "export", RequestKind.EXPORT: "export"}


@workflow.defn(name="DataSubjectRequestWorkflow")
class DataSubjectRequestWorkflow:
    """One request, one execution: its id is the request's opaque id."""

    @workflow.init
    def __init__(self, request: DsrRequest) -> None:
        self._request = request
        # For an unverified request this due date is provisional: verification sets it again.
        self._status = RequestStatus(
            id=request.id,
            tenant=request.tenant,
            kind=request.kind,
            step=Step.RECEIVED,
            received_at=request.received_at,
            due_at=gates.due_date(request.received_at),
        )
        # Set by an extension, so that a pending deadline timer is set again for the new date.
        self._deadline_changed = False

    @workflow.run
    async def run(self, request: DsrRequest) -> RequestStatus:
        """Carry the request through every step and return its final status."""
        await self._audit("received", detail={"kind": request.kind.value})

        ended = await self._pass_gates(request)
        if ended is not None:
            return ended

        self._status.step = Step.LOCATING
        systems = await workflow.execute_activity(
            "dsr.list_systems", request.tenant, result_type=list[SystemInfo], **QUICK
        )
        if not systems:
            return await self._finish(Step.FAILED, f"no system is configured for tenant {request.tenant}")
        for s in systems:
            self._status.systems[s.name] = SystemStatus(system=s.name, type=s.type)
        await asyncio.gather(*(self._locate(s) for s in systems))

        self._status.step = Step.EXECUTING
        needed = MUTATING_CAPABILITY[request.kind]
        runnable = []
        for s in systems:
            st = self._status.systems[s.name]
            if st.state == SystemState.FAILED:
                continue
            if needed not in s.capabilities:
                st.state = SystemState.NOT_APPLICABLE
                continue
            runnable.append(s)

        if request.kind == RequestKind.ERASURE:
            await asyncio.gather(*(self._erase(s) for s in runnable))
            self._status.step = Step.VERIFYING
            await asyncio.gather(
                *(self._verify(s) for s in runnable if self._status.systems[s.name].state != SystemState.FAILED)
            )
        else:
            parts = await asyncio.gather(*(self._export(s) for s in runnable))
            self._status.step = Step.DELIVERING
            present = [p for p in parts if p]
            if present:
                self._status.bundle = await workflow.execute_activity(
                    "dsr.deliver", DeliverInput(request_id=request.id, parts=present),
                    result_type=BundleRef, **BULK,
                )
                await self._audit("delivered", detail={"sha256": self._status.bundle.sha256})

        failed = sorted(n for n, st in self._status.systems.items() if st.state == SystemState.FAILED)
        if failed:
            return await self._finish(Step.FAILED, "systems failed: " + ", ".join(failed))
        return await self._finish(Step.COMPLETED, None)

    # --- the gates before execution ---------------------------------------------------

    async def _pass_gates(self, request: DsrRequest) -> RequestStatus | None:
        """Identity verification, then approval; the final status when the request ends at a gate.

        A cancellation may arrive at any await up to here; it is checked before each gate and last of all,
        so that nothing is executed for a request the subject withdrew.
        """
        if not request.identity_verified and self._status.cancellation is None:
            self._status.step = Step.AWAITING_VERIFICATION
            if not await self._wait_for_verification():
                # TODO(issue 3.7): notify subject
                return await self._finish(
                    Step.UNVERIFIED,
                    f"identity was not verified within {request.verification_timeout_days} days of receipt",
                )
            if self._status.verification is not None:
                await self._audit("identity_verified", actor=self._status.verification.actor,
                                  detail={"method": self._status.verification.method})

        if request.approval_required and self._status.cancellation is None:
            self._status.step = Step.AWAITING_APPROVAL
            await self._wait_for_decision()
            if self._status.decision is not None:
                await self._audit("decided", outcome=self._status.decision.outcome,
                                  actor=self._status.decision.actor)

        if self._status.cancellation is not None:
            return await self._finish_cancelled(self._status.cancellation)
        if self._status.decision is not None and self._status.decision.outcome == "reject":
            return await self._finish(Step.REJECTED, self._status.decision.reason)
        return None

    @workflow.update
    async def verify(self, verification: Verification) -> RecordedVerification:
        """Someone confirmed the subject's identity; the legal clock starts now (GDPR Art. 12(6), 11(2))."""
        now = workflow.now()
        self._status.verification = RecordedVerification(**verification.model_dump(), verified_at=now)
        self._status.verified_at = now
        self._status.due_at = gates.due_date(now)
        return self._status.verification

    @verify.validator
    def _validate_verification(self, verification: Verification) -> None:
        gates.check_verification(self._request, self._status)

    async def _wait_for_verification(self) -> bool:
        """Wait for ``verify`` (or a cancellation); False when the verification period ran out."""
        period_ends = self._status.received_at + timedelta(days=self._request.verification_timeout_days)
        try:
            await workflow.wait_condition(
                lambda: self._status.verification is not None or self._status.cancellation is not None,
                timeout=max(period_ends - workflow.now(), timedelta(seconds=1)),
            )
        except TimeoutError:
            return False
        return True

    @workflow.update
    async def decide(self, decision: Decision) -> RecordedDecision:
        """The tenant administrator approves or rejects the request."""
        self._status.decision = RecordedDecision(**decision.model_dump(), decided_at=workflow.now())
        return self._status.decision

    @decide.validator
    def _validate_decision(self, decision: Decision) -> None:
        gates.check_decision(self._request, self._status, decision)

    async def _wait_for_decision(self) -> None:
        """Wait for ``decide`` (or a cancellation); flag the request overdue when the deadline passes.

        Each wake-up computes the time left again, since an extension may have moved the deadline.
        Overdue does not decide anything: nobody decides for the admin, so the wait goes on.
        """
        def settled() -> bool:
            return self._status.decision is not None or self._status.cancellation is not None

        while not settled():
            self._deadline_changed = False
            remaining = self._status.due_at - workflow.now()
            try:
                await workflow.wait_condition(
                    lambda: settled() or self._deadline_changed,
                    timeout=None if self._status.overdue else max(remaining, timedelta(seconds=1)),
                )
            except TimeoutError:
                self._status.overdue = True
                await self._audit("deadline_passed")

    @workflow.update
    async def extend(self, extension: Extension) -> RecordedExtension:
        """The tenant administrator extends the deadline by one or two further months (GDPR Art. 12(3))."""
        start = gates.clock_start(self._status)
        recorded = RecordedExtension(
            **extension.model_dump(),
            extended_at=workflow.now(),
            original_due_at=gates.due_date(start),
            new_due_at=gates.due_date(start, 1 + extension.months),
        )
        self._status.extension = recorded
        self._status.due_at = recorded.new_due_at
        self._deadline_changed = True
        # The reason is the admin's free text: it stays in the (encrypted) status, out of the audit trail.
        await self._audit("extended", actor=extension.actor,
                          detail={"months": extension.months, "new_due_at": recorded.new_due_at.isoformat()})
        # TODO(issue 3.7): notify subject
        return recorded

    @extend.validator
    def _validate_extension(self, extension: Extension) -> None:
        gates.check_extension(self._request, self._status, extension, workflow.now())

    @workflow.update
    async def cancel(self, cancellation: Cancellation) -> RecordedCancellation:
        """The subject withdraws the request; allowed only before execution starts."""
        self._status.cancellation = RecordedCancellation(**cancellation.model_dump(), cancelled_at=workflow.now())
        return self._status.cancellation

    @cancel.validator
    def _validate_cancellation(self, cancellation: Cancellation) -> None:
        gates.check_cancellation(self._status)

    async def _finish_cancelled(self, cancellation: RecordedCancellation) -> RequestStatus:
        await self._audit("cancelled", actor=cancellation.actor)
        reason = f"cancelled by {cancellation.actor}"
        if cancellation.reason:
            reason += f": {cancellation.reason}"
        # TODO(issue 3.7): notify subject
        return await self._finish(Step.CANCELLED, reason)

    # --- per-system steps ---------------------------------------------------------------

    def _task(self, system: str) -> SystemTask:
        return SystemTask(request_id=self._request.id, system=system, identities=self._request.identities.as_dict())

    async def _on_system(self, system: SystemInfo, step: str, activity: str, result_type: type[T],
                         options: dict[str, Any]) -> T | None:
        """Run one system's activity; a failure after its retries marks that system failed, never the others."""
        try:
            return await workflow.execute_activity(
                activity, self._task(system.name), result_type=result_type, **options
            )
        except ActivityError as err:
            await self._system_failed(self._status.systems[system.name], step, err)
            return None

    async def _locate(self, system: SystemInfo) -> None:
        out = await self._on_system(system, "locate", "dsr.locate", LocateOutcome, QUICK)
        if out is None:
            return
        st = self._status.systems[system.name]
        st.found = out.found
        st.state = SystemState.LOCATED
        await self._audit("located", system=system.name, detail={"found": out.found})

    async def _export(self, system: SystemInfo) -> str | None:
        out = await self._on_system(system, "export", "dsr.export", ExportOutcome, BULK)
        if out is None:
            return None
        st = self._status.systems[system.name]
        st.exported = out.exported
        st.state = SystemState.DONE
        await self._audit("exported", system=system.name, detail={"exported": out.exported})
        return out.part or None

    async def _erase(self, system: SystemInfo) -> None:
        out = await self._on_system(system, "erase", "dsr.erase", ErasureOutcome, BULK)
        if out is None:
            return
        st = self._status.systems[system.name]
        st.masked, st.deleted, st.retained = out.masked, out.deleted, out.retained
        await self._audit(
            "erased", system=system.name,
            detail={"masked": out.masked, "deleted": out.deleted,
                    "retained": [r.model_dump() for r in out.retained]},
        )

    async def _verify(self, system: SystemInfo) -> None:
        out = await self._on_system(system, "verify", "dsr.verify_erasure", VerificationOutcome, QUICK)
        if out is None:
            return
        st = self._status.systems[system.name]
        st.remaining = {k: v for k, v in out.remaining.items() if v}
        if st.remaining:
            st.state = SystemState.FAILED
            st.error = "erasable data remains after erasure: " + ", ".join(
                f"{k} ({v})" for k, v in sorted(st.remaining.items())
            )
            await self._audit("verification_failed", system=system.name, outcome="failed",
                              detail={"remaining": st.remaining})
            return
        st.state = SystemState.DONE
        await self._audit("verified", system=system.name)

    async def _system_failed(self, st: SystemStatus, step: str, err: ActivityError) -> None:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        st.state = SystemState.FAILED
        st.error = f"{step}: {message}"
        await self._audit(f"{step}_failed", system=st.system, outcome="failed",
                          detail={"error_type": getattr(cause, "type", None) or type(cause).__name__})

    # --- bookkeeping --------------------------------------------------------------------

    async def _finish(self, step: Step, reason: str | None) -> RequestStatus:
        self._status.step = step
        self._status.outcome_reason = reason
        self._status.completed_at = workflow.now()
        await self._audit("finished", outcome=step.value)
        # An update handler may still be recording its evidence (an extension's audit event).
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status

    async def _audit(self, event: str, *, system: str | None = None, outcome: str = "ok",
                     actor: str | None = None, detail: dict | None = None) -> None:
        await workflow.execute_activity(
            "dsr.record_event",
            AuditEvent(request_id=self._request.id, tenant=self._request.tenant, event=event, system=system,
                       outcome=outcome, actor=actor, detail=detail or {}, at=workflow.now()),
            **QUICK,
        )

    @workflow.query
    def status(self) -> RequestStatus:
        """The current step, the deadline, and per system what was found, exported, erased and retained."""
        return self._status
