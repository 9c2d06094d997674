"""A dispute about a subject's data: restrict processing, wait for the decision, then lift or go on (policy 6.1.4).

Open → tell the subject coordinator the subject is restricted → restrict in every system that can (holding the
subject's lock for that step only) → tell the subject → wait for the administrator's ``resolve`` (durably, without
limit; the restriction stays) → then:

- the company prevails: tell the subject first, wait the notice period (GDPR Art. 18(3)), lift the restriction in
  every system, end the coordinator's restriction, tell the subject it was lifted;
- the subject prevails: end the coordinator's restriction (so that the erasure it asked for is not held behind
  this very dispute), run what the subject asked for as a child request, and only when that request has completed
  lift the restriction, so that no stale restriction remains on the rows (for an erasure, the data is gone by
  then; for any other kind the subject is told before the lifting). Should the follow-up not complete, the
  restriction stays in place and the dispute records why: the subject prevailed, so their data is not released
  for processing again without an operator looking at it.

Deterministic orchestration only: every side effect is an activity called by name. Audit records hold references,
counts and outcomes; the administrator's reason and the subject's grounds stay in the (encrypted) status.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

from connectors.contract import ActionOutcome
from workflows.bookkeeping import AuditKeys, record_event, run_bookkeeping
from workflows.messages import (
    DISPUTE_WORKFLOW,
    DisputeInput,
    DisputeResolution,
    DisputeStatus,
    DisputeStep,
    Notification,
    NotificationKind,
    NotificationResult,
    Recipient,
    RestrictionChange,
    SubjectInput,
)
from workflows.models import KIND_CAPABILITY, DsrRequest, RequestKind, RequestStatus, Step
from workflows.search import attributes_registered, received_attributes
from workflows.shredding import SHREDDING_WORKFLOW, ShredInput, dispute_summary_of, shredding_workflow_id
from workflows.subject import SubjectLockClient, signal_subject
from workflows.tasks import ActionTask, AuditEvent, SystemInfo

NON_RETRYABLE = ["ConfigurationError", "UnsupportedError", "ValidationError"]
QUICK: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
        maximum_attempts=8,
        non_retryable_error_types=NON_RETRYABLE,
    ),
}
NOTICE_RETRY = timedelta(hours=6)
"""Pause between attempts at the notice before lifting: the restriction is never lifted before it went out."""
RESTRICT = KIND_CAPABILITY[RequestKind.RESTRICTION]
REQUEST_WORKFLOW = "DataSubjectRequestWorkflow"
FOLLOW_UP_SUFFIX = "-followup"
REQUEST_ID_MAX = 64  # DsrRequest.id's limit
SHRED_DISPUTES_PATCH = "dispute-shredding"


@workflow.defn(name=DISPUTE_WORKFLOW)
class DisputeWorkflow(SubjectLockClient):
    """One dispute, one execution: its id is the dispute's opaque id."""

    @workflow.init
    def __init__(self, dispute: DisputeInput) -> None:
        self._dispute = dispute
        self._status = DisputeStatus(id=dispute.id, tenant=dispute.tenant, step=DisputeStep.RESTRICTING,
                                     opened_at=dispute.opened_at)
        # Systems that can restrict, whether or not their restriction succeeded: all of them are lifted.
        self._restrictable: list[str] = []
        self._audit_keys = AuditKeys()

    @workflow.run
    async def run(self, dispute: DisputeInput) -> DisputeStatus:
        """Restrict, wait for the resolution, then lift after notice or go on with the subject's request."""
        await self._audit("dispute_opened", detail={"requested_kind": dispute.requested_kind.value,
                                                    "notice_days": dispute.notice_days})
        await self._restrict()
        self._status.step = DisputeStep.RESTRICTED
        await self._notify(NotificationKind.RESTRICTION_APPLIED,
                           {"systems": sorted(self._status.restricted), "requested_kind": dispute.requested_kind.value})

        await workflow.wait_condition(lambda: self._status.resolution is not None)
        resolution = self._status.resolution
        assert resolution is not None
        await self._audit("dispute_resolved", actor=resolution.actor, outcome=resolution.outcome)
        if resolution.outcome == "company_prevails":
            await self._lift_after_notice()
        else:
            await self._follow_up()

        self._status.step = DisputeStep.CLOSED
        await self._audit("dispute_closed", detail={"lifted": self._status.lifted_at is not None,
                                                    "failed": sorted(self._status.failed)})
        await workflow.wait_condition(workflow.all_handlers_finished)
        if workflow.patched(SHRED_DISPUTES_PATCH):  # disputes closed before this change were not shredded
            await self._schedule_shredding()
        return self._status

    async def _schedule_shredding(self) -> None:
        """Start the dispute's crypto-shredding, which outlives this workflow (workflows/shredding.py)."""
        days = self._dispute.shred_after_days
        if days is None:
            return
        data = ShredInput(request_id=self._dispute.id, tenant=self._dispute.tenant,
                          shred_at=workflow.now() + timedelta(days=days), summary=dispute_summary_of(self._status))
        await workflow.start_child_workflow(
            SHREDDING_WORKFLOW, data, id=shredding_workflow_id(self._dispute.id),
            parent_close_policy=ParentClosePolicy.ABANDON, memo={"tenant": self._dispute.tenant},
        )

    # --- the decision -------------------------------------------------------------------

    @workflow.update
    async def resolve(self, resolution: DisputeResolution) -> DisputeStatus:
        """The administrator decides the dispute; allowed once, while the subject is restricted."""
        self._status.resolution = resolution
        self._status.resolved_at = workflow.now()
        return self._status.model_copy(deep=True)

    @resolve.validator
    def _validate_resolution(self, resolution: DisputeResolution) -> None:
        if resolution.tenant is not None and resolution.tenant != self._dispute.tenant:
            raise ValueError("an administrator resolves only their own tenant's disputes")
        if self._status.resolution is not None:
            raise ValueError(f"already resolved: {self._status.resolution.outcome}")
        if self._status.step != DisputeStep.RESTRICTED:
            raise ValueError(f"not awaiting a resolution (step: {self._status.step.value})")
        if resolution.outcome == "subject_prevails":
            try:
                self._follow_up_request(workflow.now())
            except ValidationError as err:
                raise ValueError(f"the {self._dispute.requested_kind.value} the subject asked for cannot be "
                                 f"started from this dispute: {err.errors()[0]['msg']}") from None

    @workflow.query
    def status(self) -> DisputeStatus:
        """Where the dispute is, and per system what was restricted."""
        return self._status

    # --- restricting and lifting --------------------------------------------------------

    async def _restrict(self) -> None:
        """Mark the subject restricted at its coordinator, then restrict every system that can, under the lock."""
        d = self._dispute
        change = RestrictionChange(dispute_id=d.id)
        await signal_subject(d.tenant, d.subject_key, "restricted", change,
                             start=SubjectInput(tenant=d.tenant, subject_key=d.subject_key, restricted_by=[d.id]))
        await self._acquire_subject(d.tenant, d.subject_key, "dispute")
        try:
            try:
                systems = await workflow.execute_activity(
                    "dsr.list_systems", d.tenant, result_type=list[SystemInfo], **QUICK
                )
            except ActivityError as err:
                self._status.failed["*"] = f"list systems: {_message(err)}"
                await self._audit("list_systems_failed", outcome="failed", detail={"error_type": _error_type(err)})
                return
            for s in systems:
                if RESTRICT in s.capabilities:
                    self._restrictable.append(s.name)
                else:
                    self._status.not_applicable.append(s.name)
                    await self._audit("restriction_not_applicable", system=s.name)
            await asyncio.gather(*(self._restrict_one(name) for name in list(self._restrictable)))
        finally:
            await self._release_subject(d.tenant, d.subject_key)

    async def _restrict_one(self, system: str) -> None:
        """Restrict one system; a failure is recorded for that system and never stops the others."""
        try:
            out = await workflow.execute_activity("dsr.restrict", self._task(system), result_type=ActionOutcome,
                                                  **QUICK)
        except ActivityError as err:
            if _error_type(err) == "UnsupportedError":
                self._status.not_applicable.append(system)
                self._restrictable.remove(system)
                await self._audit("restriction_not_applicable", system=system)
                return
            self._status.failed[system] = f"restrict: {_message(err)}"
            await self._audit("restrict_failed", system=system, outcome="failed",
                              detail={"error_type": _error_type(err)})
            return
        self._status.restricted[system] = out.changed
        await self._audit("restricted", system=system, detail={"changed": out.changed, "fields": out.fields})

    async def _lift(self) -> None:
        """Lift this dispute's restriction in every system that can restrict (also where restricting failed)."""
        self._status.step = DisputeStep.LIFTING
        await asyncio.gather(*(self._lift_one(name) for name in self._restrictable))
        self._status.lifted_at = workflow.now()

    async def _lift_one(self, system: str) -> None:
        try:
            out = await workflow.execute_activity("dsr.lift_restriction", self._task(system),
                                                  result_type=ActionOutcome, **QUICK)
        except ActivityError as err:
            self._status.failed[system] = f"lift: {_message(err)}"
            await self._audit("lift_failed", system=system, outcome="failed", detail={"error_type": _error_type(err)})
            return
        await self._audit("restriction_lifted", system=system, detail={"changed": out.changed})

    def _task(self, system: str) -> ActionTask:
        d = self._dispute
        return ActionTask(request_id=d.id, system=system, identities=d.identities.as_dict(), reference=d.id)

    # --- the two outcomes ---------------------------------------------------------------

    async def _lift_after_notice(self) -> None:
        """The company prevails: the subject is told first, and the restriction is lifted after the notice period."""
        d = self._dispute
        self._status.step = DisputeStep.NOTICE_PERIOD
        notice = timedelta(days=d.notice_days)
        told_at = await self._notice_before_lifting(notice)
        remaining = told_at + notice - workflow.now()
        if remaining > timedelta(0):
            await workflow.sleep(remaining)
        await self._lift()
        await signal_subject(d.tenant, d.subject_key, "unrestricted", RestrictionChange(dispute_id=d.id))
        await self._notify(NotificationKind.RESTRICTION_LIFTED, {})

    async def _follow_up(self) -> None:
        """The subject prevails: run what they asked for as a child request, then lift the restriction."""
        d = self._dispute
        self._status.step = DisputeStep.FOLLOW_UP
        # The coordinator first, so that the follow-up erasure is not held behind this dispute's restriction.
        await signal_subject(d.tenant, d.subject_key, "unrestricted", RestrictionChange(dispute_id=d.id))
        request = self._follow_up_request(workflow.now())
        self._status.follow_up_request_id = request.id
        try:
            # Listed, and read by the API, like a request the portal started: its memo and search attributes.
            child = await workflow.start_child_workflow(
                REQUEST_WORKFLOW, request, id=request.id, result_type=RequestStatus,
                parent_close_policy=ParentClosePolicy.ABANDON,
                memo={"tenant": d.tenant, "kind": request.kind.value, "received_at": request.received_at.isoformat()},
                search_attributes=(received_attributes(d.tenant, request.kind, request.received_at)
                                   if attributes_registered() else None),
            )
            await self._audit("follow_up_started", detail={"follow_up_request_id": request.id,
                                                           "kind": request.kind.value})
            result: RequestStatus = await child
        except (ChildWorkflowError, WorkflowAlreadyStartedError) as err:
            self._status.failed["follow_up"] = f"the follow-up request failed: {err.message}"
            await self._audit("follow_up_failed", outcome="failed", detail={"error_type": type(err).__name__})
            return
        await self._audit("follow_up_finished", outcome=result.step.value,
                          detail={"follow_up_request_id": request.id})
        if result.step != Step.COMPLETED:
            self._status.failed["follow_up"] = (f"the follow-up request ended {result.step.value}: "
                                                f"{result.outcome_reason or 'no reason given'}")
            return
        if request.kind != RequestKind.ERASURE:
            # The subject's data stays and will be processed again: Art. 18(3) asks that they hear it first.
            await self._notice_before_lifting(timedelta(0))
        await self._lift()
        if request.kind != RequestKind.ERASURE:
            await self._notify(NotificationKind.RESTRICTION_LIFTED, {})

    def _follow_up_request(self, received_at: datetime) -> DsrRequest:
        """The request the subject asked for; the dispute's resolution is its approval."""
        d = self._dispute
        request_id = d.id[: REQUEST_ID_MAX - len(FOLLOW_UP_SUFFIX)] + FOLLOW_UP_SUFFIX
        return DsrRequest(id=request_id, tenant=d.tenant, kind=d.requested_kind, identities=d.identities,
                          verified_by="dispute", identity_verified=True, approval_required=False,
                          received_at=received_at, details=d.details, subject_key=d.subject_key)

    # --- telling and recording ----------------------------------------------------------

    async def _notice_before_lifting(self, notice: timedelta) -> datetime:
        """Tell the subject when the restriction will be lifted; try until the notifier took it (Art. 18(3)).

        Returns the moment the notice went out (or was skipped because the subject cannot be reached), from which
        the notice period runs.
        """
        while True:
            now = workflow.now()
            result = await self._notify(NotificationKind.RESTRICTION_LIFT_NOTICE,
                                        {"lift_on": (now + notice).date().isoformat(),
                                         "notice_days": notice.days})
            if result is not None:
                self._status.failed.pop("subject_notice", None)
                if result.sent:
                    self._status.subject_notified_at = now
                return now
            self._status.failed["subject_notice"] = "the notice before lifting could not be sent; trying again"
            await workflow.sleep(NOTICE_RETRY)

    async def _notify(self, kind: NotificationKind, facts: dict[str, Any]) -> NotificationResult | None:
        """Tell the subject; None when the notifier failed after its retries (recorded, never fatal)."""
        d = self._dispute
        note = Notification(request_id=d.id, tenant=d.tenant, kind=kind, recipient=Recipient.SUBJECT,
                            request_kind=d.requested_kind, identities=d.identities, facts=facts,
                            dedup_key=f"{d.id}:{kind.value}")
        try:
            result = await run_bookkeeping("dsr.notify", note, QUICK, result_type=NotificationResult)
        except ActivityError as err:
            await self._audit(f"{kind.value}_notification_failed", outcome="failed",
                              detail={"error_type": _error_type(err)})
            return None
        if not result.sent:
            await self._audit(f"{kind.value}_notification_skipped", outcome="skipped",
                              detail={"reason": result.skipped_reason})
        return result

    async def _audit(self, event: str, *, system: str | None = None, outcome: str = "ok",
                     actor: str | None = None, detail: dict[str, Any] | None = None) -> None:
        await record_event(
            AuditEvent(request_id=self._dispute.id, tenant=self._dispute.tenant, event=event, system=system,
                       outcome=outcome, actor=actor, detail=detail or {}, at=workflow.now()),
            QUICK, self._audit_keys,
        )


def _error_type(err: ActivityError) -> str:
    cause = err.cause
    return getattr(cause, "type", None) or type(cause).__name__


def _message(err: ActivityError) -> str:
    cause = err.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause or err)
