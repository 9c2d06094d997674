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

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows import gates
from workflows.bookkeeping import AuditKeys, run_bookkeeping
from workflows.messages import NotificationKind, Recipient
from workflows.models import (
    MUTATING_KINDS,
    BundleRef,
    DsrRequest,
    RequestKind,
    RequestStatus,
    Step,
    SystemState,
    SystemStatus,
)
from workflows.restriction import RestrictionHold
from workflows.search import sync_request_attributes
from workflows.subject import SubjectLockClient
from workflows.tasks import DeliverInput, SystemInfo
from workflows.updates import (
    AdminObjection,
    Cancellation,
    Decision,
    Extension,
    RecordedAdminObjection,
    RecordedCancellation,
    RecordedDecision,
    RecordedExtension,
    RecordedVerification,
    SystemRetry,
    Verification,
)


@workflow.defn(name="DataSubjectRequestWorkflow")
class DataSubjectRequestWorkflow(RestrictionHold, SubjectLockClient):
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
        self._systems: dict[str, SystemInfo] = {}
        self._retries: list[str] = []  # systems an administrator asked to retry, in order
        self._attention_rounds = 0
        self._audit_keys = AuditKeys()

    @workflow.run
    async def run(self, request: DsrRequest) -> RequestStatus:
        """Carry the request through every step and return its final status."""
        await self._audit("received", detail={"kind": request.kind.value})
        await self._notify(NotificationKind.RECEIPT, facts={"due_at": self._status.due_at.isoformat()})

        ended = await self._pass_gates(request)
        if ended is not None:
            return ended
        if not await self._enter_execution():
            assert self._status.cancellation is not None
            return await self._finish_cancelled(self._status.cancellation)
        try:
            ended = await self._execute(request)
        finally:
            await self._leave_execution()
        # Only a restriction goes on after execution: it stays in force, outside the subject's change lock.
        return ended if ended is not None else await self._keep_restricted(request)

    async def _execute(self, request: DsrRequest) -> RequestStatus | None:
        """Locate, act per system, verify or deliver, and tell the subject; None when a restriction is in force."""
        self._enter_step(Step.LOCATING)
        try:
            systems = await workflow.execute_activity(
                "dsr.list_systems", request.tenant, result_type=list[SystemInfo], **self._quick
            )
        except ActivityError:
            return await self._finish(Step.FAILED, "the configured systems could not be listed")
        if not systems:
            return await self._finish(Step.FAILED, f"no system is configured for tenant {request.tenant}")
        for s in systems:
            self._status.systems[s.name] = SystemStatus(system=s.name, type=s.type)

        self._enter_step(Step.EXECUTING)
        self._systems = {s.name: s for s in systems}
        await asyncio.gather(*(self._run_system(s) for s in systems))
        await self._attend_to_failures()

        parts = [st.part for st in self._status.systems.values() if st.part]
        if request.kind in (RequestKind.ACCESS, RequestKind.EXPORT) and parts:
            self._enter_step(Step.DELIVERING)
            self._status.bundle = await workflow.execute_activity(
                "dsr.deliver", DeliverInput(request_id=request.id, parts=parts), result_type=BundleRef, **self._bulk,
            )
            await self._audit("delivered", detail={"sha256": self._status.bundle.sha256})
        if request.kind == RequestKind.RESTRICTION:
            return None
        facts: dict = {"systems": {n: st.state.value for n, st in self._status.systems.items()}}
        if self._status.bundle is not None:
            facts["link"] = await run_bookkeeping("dsr.export_link", request.id, self._quick, result_type=str)
        await self._notify(NotificationKind.COMPLETION, facts=facts)
        return await self._finish(Step.COMPLETED, None)

    # --- systems that need attention -----------------------------------------------------

    async def _attend_to_failures(self) -> None:
        """While some system needs attention, wait for an administrator's retry and resume it where it stopped.

        The other systems are done; the admin is told once per round. Nobody gives up in the admin's place.
        """
        while waiting := sorted(n for n, st in self._status.systems.items()
                                if st.state == SystemState.NEEDS_ATTENTION):
            self._enter_step(Step.NEEDS_ATTENTION)
            self._attention_rounds += 1
            await self._notify(NotificationKind.ADMIN_REMINDER, Recipient.ADMIN,
                               facts={"due_at": self._status.due_at.isoformat(),
                                      "waiting_for": "a retry of " + ", ".join(waiting)},
                               key=f"attention-{self._attention_rounds}")
            await workflow.wait_condition(lambda: bool(self._retries))
            while self._retries:
                name = self._retries.pop(0)
                st = self._status.systems[name]
                start, st.state, st.error, st.failed_step = st.failed_step or "locate", SystemState.PENDING, None, None
                st.attempts += 1
                await self._run_system(self._systems[name], start=start)
        self._enter_step(Step.EXECUTING)

    @workflow.update
    async def retry_system(self, retry: SystemRetry) -> SystemStatus:
        """An administrator retries one system that needs attention; it resumes from its failed step."""
        self._retries.append(retry.system)
        await self._audit("retry_requested", system=retry.system, actor=retry.actor)
        return self._status.systems[retry.system]

    @retry_system.validator
    def _validate_retry(self, retry: SystemRetry) -> None:
        gates.check_retry(self._request, self._status, retry, self._retries)

    # --- the gates before execution ---------------------------------------------------

    async def _pass_gates(self, request: DsrRequest) -> RequestStatus | None:
        """Identity verification, then approval; the final status when the request ends at a gate.

        A cancellation may arrive at any await up to here; it is checked before each gate and last of all,
        so that nothing is executed for a request the subject withdrew.
        """
        if not request.identity_verified and self._status.cancellation is None:
            self._enter_step(Step.AWAITING_VERIFICATION)
            if not await self._wait_for_verification():
                await self._notify(NotificationKind.UNVERIFIED,
                                   facts={"days": request.verification_timeout_days})
                return await self._finish(
                    Step.UNVERIFIED,
                    f"identity was not verified within {request.verification_timeout_days} days of receipt",
                )
            if self._status.verification is not None:
                await self._audit("identity_verified", actor=self._status.verification.actor,
                                  detail={"method": self._status.verification.method})

        if request.approval_required and self._status.cancellation is None:
            self._enter_step(Step.AWAITING_APPROVAL)
            await self._wait_for_decision()
            if self._status.decision is not None:
                await self._audit("decided", outcome=self._status.decision.outcome,
                                  actor=self._status.decision.actor)

        if self._objection_window_applies() and self._status.cancellation is None and not self._rejection_reason():
            await self._run_objection_window()

        if self._status.cancellation is not None:
            return await self._finish_cancelled(self._status.cancellation)
        reason = self._rejection_reason()
        if reason is not None:
            await self._notify(NotificationKind.REJECTION, facts={"reason": reason})
            return await self._finish(Step.REJECTED, reason)
        return None

    def _rejection_reason(self) -> str | None:
        """Why the request ends at a gate: the admin's rejection or objection; None when it goes on."""
        if self._status.decision is not None and self._status.decision.outcome == "reject":
            return self._status.decision.reason
        if self._status.objection is not None:
            return f"the administrator objected: {self._status.objection.reason}"
        return None

    # --- the administrator's objection window (restriction of a managed account, policy 7.1) -------

    def _objection_window_applies(self) -> bool:
        policy = self._request.policy
        return (self._request.kind == RequestKind.RESTRICTION and policy.organisation_managed
                and policy.objection_window_days > 0)

    async def _run_objection_window(self) -> None:
        self._enter_step(Step.OBJECTION_WINDOW)
        closes = workflow.now() + timedelta(days=self._request.policy.objection_window_days)
        await self._notify(NotificationKind.ADMIN_OBJECTION_WINDOW, Recipient.ADMIN,
                           facts={"closes_at": closes.isoformat(), "due_at": self._status.due_at.isoformat()})
        try:
            await workflow.wait_condition(
                lambda: self._status.objection is not None or self._status.cancellation is not None,
                timeout=closes - workflow.now(),
            )
        except TimeoutError:
            await self._audit("objection_window_closed")
            return
        if self._status.objection is not None:
            await self._audit("admin_objected", outcome="objected", actor=self._status.objection.actor)

    @workflow.update
    async def object(self, objection: AdminObjection) -> RecordedAdminObjection:
        """The organisation's administrator objects to a restriction, with a reason that is recorded."""
        self._status.objection = RecordedAdminObjection(**objection.model_dump(), objected_at=workflow.now())
        return self._status.objection

    @object.validator
    def _validate_objection(self, objection: AdminObjection) -> None:
        gates.check_objection(self._request, self._status, objection)

    @workflow.update
    async def verify(self, verification: Verification) -> RecordedVerification:
        """Someone confirmed the subject's identity; the legal clock starts now (GDPR Art. 12(6), 11(2))."""
        now = workflow.now()
        self._status.verification = RecordedVerification(**verification.model_dump(), verified_at=now)
        self._status.verified_at = now
        self._status.due_at = gates.due_date(now)
        sync_request_attributes(self._status)
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
        """Wait for ``decide`` (or a cancellation), reminding the admin and escalating as the deadline nears.

        Every wake-up recomputes what is due next (an extension may have moved the deadline):
        a reminder to the administrator every ``reminder_every_days``, one escalation to the privacy
        office ``escalate_days_before_due`` before the due date, and the overdue flag at the due date.
        Nobody decides in the administrator's place: past the deadline the wait goes on.
        """
        policy = self._request.policy
        every = timedelta(days=policy.reminder_every_days)
        next_reminder = workflow.now() + every

        def settled() -> bool:
            return self._status.decision is not None or self._status.cancellation is not None

        while not settled():
            self._deadline_changed = False
            now = workflow.now()
            escalate_at = self._status.due_at - timedelta(days=policy.escalate_days_before_due)
            moments = [next_reminder]
            if self._status.escalated_at is None:
                moments.append(escalate_at)
            if not self._status.overdue:
                moments.append(self._status.due_at)
            wake = min(moments)
            try:
                await workflow.wait_condition(lambda: settled() or self._deadline_changed,
                                              timeout=max(wake - now, timedelta(seconds=1)))
                continue
            except TimeoutError:
                pass
            now = workflow.now()
            if not self._status.overdue and now >= self._status.due_at:
                self._status.overdue = True
                await self._audit("deadline_passed")
            if self._status.escalated_at is None and now >= escalate_at:
                self._status.escalated_at = now
                await self._audit("escalated")
                await self._notify(NotificationKind.ESCALATION, Recipient.PRIVACY_OFFICE,
                                   facts={"due_at": self._status.due_at.isoformat(), "waiting_for": "approval"})
            if now >= next_reminder:
                self._status.reminders_sent += 1
                next_reminder = now + every
                await self._notify(NotificationKind.ADMIN_REMINDER, Recipient.ADMIN,
                                   facts={"due_at": self._status.due_at.isoformat(),
                                          "reminder": self._status.reminders_sent},
                                   key=str(self._status.reminders_sent))

    # --- one change at a time per subject (issue 3.6; the coordinator is workflows/subject.py) ----------

    def _locks_subject(self) -> bool:
        return self._request.kind in MUTATING_KINDS and self._request.subject_key is not None

    async def _enter_execution(self) -> bool:
        """Take this subject's change lock before touching systems; False when the subject cancelled meanwhile."""
        if not self._locks_subject():
            return True
        self._enter_step(Step.AWAITING_SUBJECT)
        r = self._request
        assert r.subject_key is not None
        got = await self._acquire_subject(r.tenant, r.subject_key, r.kind,
                                          give_up=lambda: self._status.cancellation is not None)
        if got and self._status.cancellation is not None:  # the grant and a cancellation arrived together
            await self._release_subject(r.tenant, r.subject_key)
            return False
        return got

    async def _leave_execution(self) -> None:
        """Give the subject's change lock back."""
        if self._locks_subject():
            assert self._request.subject_key is not None
            await self._release_subject(self._request.tenant, self._request.subject_key)

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
        sync_request_attributes(self._status)
        self._deadline_changed = True
        # The reason is the admin's free text: it stays in the (encrypted) status, out of the audit trail.
        await self._audit("extended", actor=extension.actor,
                          detail={"months": extension.months, "new_due_at": recorded.new_due_at.isoformat()})
        await self._notify(NotificationKind.EXTENSION,
                           facts={"new_due_at": recorded.new_due_at.isoformat(), "reason": extension.reason})
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
        await self._notify(NotificationKind.CANCELLATION, facts={"reason": cancellation.reason or ""})
        return await self._finish(Step.CANCELLED, reason)

    @workflow.query
    def status(self) -> RequestStatus:
        """The current step, the deadline, and per system what was found, exported, erased and retained."""
        return self._status
