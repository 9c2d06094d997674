"""The life of one data subject request, from receipt to a verified outcome.

Receive → approval gate → locate → execute per system → verify → deliver → done.
Deterministic orchestration only: every side effect is an activity, called by
name so that this module never imports an implementation.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from connectors.contract import ErasureOutcome, ExportOutcome, LocateOutcome, VerificationOutcome
from workflows.models import (
    AuditEvent,
    BundleRef,
    Decision,
    DeliverInput,
    DsrRequest,
    RecordedDecision,
    RequestKind,
    RequestStatus,
    Step,
    SystemInfo,
    SystemState,
    SystemStatus,
    SystemTask,
    end_of_day,
    one_calendar_month_after,
)

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
        self._status = RequestStatus(
            id=request.id,
            tenant=request.tenant,
            kind=request.kind,
            step=Step.RECEIVED,
            received_at=request.received_at,
            due_at=end_of_day(one_calendar_month_after(request.received_at)),
        )

    @workflow.run
    async def run(self, request: DsrRequest) -> RequestStatus:
        """Carry the request through every step and return its final status."""
        await self._audit("received", detail={"kind": request.kind.value})

        if request.approval_required:
            self._status.step = Step.AWAITING_APPROVAL
            await self._wait_for_decision()
            decision = self._status.decision
            assert decision is not None
            await self._audit("decided", outcome=decision.outcome, actor=decision.actor)
            if decision.outcome == "reject":
                return await self._finish(Step.REJECTED, decision.reason)

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

    # --- the approval gate -------------------------------------------------------------

    @workflow.update
    async def decide(self, decision: Decision) -> RecordedDecision:
        """The tenant administrator approves or rejects the request."""
        self._status.decision = RecordedDecision(**decision.model_dump(), decided_at=workflow.now())
        return self._status.decision

    @decide.validator
    def _validate_decision(self, decision: Decision) -> None:
        if not self._request.approval_required:
            raise ValueError("this request does not need approval")
        if self._status.decision is not None:
            raise ValueError(f"already decided: {self._status.decision.outcome}")
        if self._status.step != Step.AWAITING_APPROVAL:
            raise ValueError(f"not awaiting approval (step: {self._status.step.value})")
        if decision.tenant is not None and decision.tenant != self._request.tenant:
            raise ValueError("an administrator decides only for their own tenant")

    async def _wait_for_decision(self) -> None:
        remaining = self._status.due_at - workflow.now()
        try:
            await workflow.wait_condition(
                lambda: self._status.decision is not None,
                timeout=max(remaining, timedelta(seconds=1)),
            )
        except TimeoutError:
            # The legal deadline passed with no decision: say so, keep waiting (nobody decides for the admin).
            self._status.overdue = True
            await self._audit("deadline_passed")
            await workflow.wait_condition(lambda: self._status.decision is not None)

    # --- per-system steps ---------------------------------------------------------------

    def _task(self, system: str) -> SystemTask:
        return SystemTask(request_id=self._request.id, system=system, identities=self._request.identities.as_dict())

    async def _locate(self, system: SystemInfo) -> None:
        st = self._status.systems[system.name]
        try:
            out = await workflow.execute_activity(
                "dsr.locate", self._task(system.name), result_type=LocateOutcome, **QUICK
            )
        except ActivityError as err:
            await self._system_failed(st, "locate", err)
            return
        st.found = out.found
        st.state = SystemState.LOCATED
        await self._audit("located", system=system.name, detail={"found": out.found})

    async def _export(self, system: SystemInfo) -> str | None:
        st = self._status.systems[system.name]
        try:
            out = await workflow.execute_activity(
                "dsr.export", self._task(system.name), result_type=ExportOutcome, **BULK
            )
        except ActivityError as err:
            await self._system_failed(st, "export", err)
            return None
        st.exported = out.exported
        st.state = SystemState.DONE
        await self._audit("exported", system=system.name, detail={"exported": out.exported})
        return out.part or None

    async def _erase(self, system: SystemInfo) -> None:
        st = self._status.systems[system.name]
        try:
            out = await workflow.execute_activity(
                "dsr.erase", self._task(system.name), result_type=ErasureOutcome, **BULK
            )
        except ActivityError as err:
            await self._system_failed(st, "erase", err)
            return
        st.masked, st.deleted, st.retained = out.masked, out.deleted, out.retained
        await self._audit(
            "erased", system=system.name,
            detail={"masked": out.masked, "deleted": out.deleted,
                    "retained": [r.model_dump() for r in out.retained]},
        )

    async def _verify(self, system: SystemInfo) -> None:
        st = self._status.systems[system.name]
        try:
            out = await workflow.execute_activity(
                "dsr.verify_erasure", self._task(system.name), result_type=VerificationOutcome, **QUICK
            )
        except ActivityError as err:
            await self._system_failed(st, "verify", err)
            return
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
