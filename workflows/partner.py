"""Waiting for a partner that erases on its own (OpenDSR processor, signed webhook, manual task).

A child of the request workflow, started when a system's erasure returns ``ErasureOutcome.external``. It waits
for the signal ``partner_status`` (sent by the API when a verified callback or a person's confirmation comes),
and as a fallback polls ``dsr.verify_erasure`` every ``poll_every_seconds``. While the partner is pending it
reminds the tenant's administrator every ``remind_after_days``; at ``timeout_days`` it escalates to the privacy
office and returns ``remaining={"partner": 1}``, which the parent shows as "needs attention".

Callbacks may repeat and arrive out of order: a status after the terminal one, or for another reference, is
ignored, so a replayed callback never reopens anything. A partner that cancels the request fails the wait
(non-retryable), as does a poll that fails with an error no retry can fix; a poll that fails after its retries
is tried again at the next poll. A person's confirmation (a ``partner_status`` with an ``actor``, from the
manual-task route) is recorded as the audit event ``confirmed`` with the actor and the time.
Deterministic: activities are called by name, the clock is ``workflow.now()``.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from connectors.contract import VerificationOutcome
from workflows.bookkeeping import run_bookkeeping
from workflows.messages import Notification, NotificationKind, NotificationResult, Recipient
from workflows.tasks import AuditEvent, PartnerStatus, PartnerWaitInput, SystemTask, partner_workflow_id

PARTNER_WAIT_WORKFLOW = "PartnerWaitWorkflow"
NON_RETRYABLE = ["ConfigurationError", "UnsupportedError", "ValidationError"]
QUICK: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=5),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=5),
        maximum_attempts=8,
        non_retryable_error_types=NON_RETRYABLE,
    ),
}
REMAINING = {"partner": 1}

__all__ = ["PARTNER_WAIT_WORKFLOW", "PartnerWaitProgress", "PartnerWaitWorkflow", "partner_workflow_id"]


class PartnerWaitProgress(BaseModel):
    """Where the wait stands (query ``progress``)."""

    reference: str
    status: str = Field(default="pending", description="The partner's last reported status.")
    started_at: datetime
    deadline: datetime = Field(description="When the wait gives up and the system needs attention.")
    polls: int = 0
    callbacks: int = Field(default=0, description="partner_status signals received (repeats included).")
    reminders: int = 0
    next_poll_at: datetime | None = None
    last_error: str | None = Field(default=None, description="Type of the last poll's failure, if it failed.")
    completed_at: datetime | None = None
    completed_by: str | None = Field(default=None, description="Who confirmed (manual task), else None.")
    via: str | None = Field(default=None, description="'callback' or 'poll': how completion was learnt.")
    timed_out: bool = False


@workflow.defn(name=PARTNER_WAIT_WORKFLOW)
class PartnerWaitWorkflow:
    """Waits for the partner's callback (or a successful poll), reminding and finally escalating."""

    def __init__(self) -> None:
        self._progress: PartnerWaitProgress | None = None
        self._reference: str | None = None
        self._terminal: str | None = None  # "completed" or "cancelled"
        self._early: list[PartnerStatus] = []

    @workflow.run
    async def run(self, data: PartnerWaitInput) -> VerificationOutcome:
        now = workflow.now()
        wait = data.external
        self._reference = wait.reference
        progress = self._progress = PartnerWaitProgress(
            reference=wait.reference, started_at=now, deadline=now + timedelta(days=wait.timeout_days))
        for early in self._early:  # signals delivered with the first task, before run started
            self.partner_status(early)
        self._early.clear()
        task = SystemTask(request_id=data.request_id, system=data.system, identities=data.identities)
        poll_every = timedelta(seconds=wait.poll_every_seconds)
        remind_every = timedelta(days=wait.remind_after_days)
        progress.next_poll_at = now + poll_every
        next_reminder = now + remind_every
        while True:
            if self._terminal == "completed":
                if progress.completed_by is not None:
                    await self._audit_confirmation(data)
                return self._done()
            if self._terminal == "cancelled":
                progress.next_poll_at = None
                raise ApplicationError("the partner cancelled the request", type="PartnerCancelled",
                                       non_retryable=True)
            now = workflow.now()
            if now >= progress.deadline:
                progress.timed_out = True
                progress.next_poll_at = None
                await self._notify(data, NotificationKind.ESCALATION, Recipient.PRIVACY_OFFICE, "timeout")
                return VerificationOutcome(remaining=dict(REMAINING))
            wake = min(progress.next_poll_at, next_reminder, progress.deadline)
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._terminal is not None, timeout=wake - now)
            if self._terminal is not None:
                continue
            now = workflow.now()
            if now >= progress.next_poll_at:
                await self._poll(task)
                progress.next_poll_at = workflow.now() + poll_every
                if self._terminal is not None:
                    continue
            if now >= next_reminder and now < progress.deadline:
                progress.reminders += 1
                await self._notify(data, NotificationKind.ADMIN_REMINDER, Recipient.ADMIN,
                                   f"reminder-{progress.reminders}")
                next_reminder = now + remind_every

    async def _poll(self, task: SystemTask) -> None:
        progress = self._progress
        assert progress is not None
        progress.polls += 1
        try:
            outcome = await workflow.execute_activity(
                "dsr.verify_erasure", task, result_type=VerificationOutcome, **QUICK)
        except ActivityError as err:
            cause = err.cause
            progress.last_error = getattr(cause, "type", None) or type(cause).__name__
            if isinstance(cause, ApplicationError) and cause.non_retryable:
                progress.next_poll_at = None
                raise
            return
        progress.last_error = None
        if outcome.ok and self._terminal is None:
            self._terminal = "completed"
            progress.status = "completed"
            progress.via = "poll"
            progress.completed_at = workflow.now()

    async def _audit_confirmation(self, data: PartnerWaitInput) -> None:
        """Record who confirmed a manual task and when (no personal data: the token's name and the time)."""
        progress = self._progress
        assert progress is not None and progress.completed_at is not None
        event = AuditEvent(request_id=data.request_id, tenant=data.tenant, event="confirmed", system=data.system,
                           actor=progress.completed_by, at=progress.completed_at,
                           detail={"reference": progress.reference})
        # Its time is the callback's, not the workflow's: the default dedup key is stable across task attempts.
        await run_bookkeeping("dsr.record_event", event, QUICK)

    def _done(self) -> VerificationOutcome:
        assert self._progress is not None
        self._progress.next_poll_at = None
        return VerificationOutcome()

    async def _notify(self, data: PartnerWaitInput, kind: NotificationKind, recipient: Recipient, key: str) -> None:
        """Tell the administrator or the privacy office; a notifier that keeps failing never fails the wait."""
        note = Notification(
            request_id=data.request_id, tenant=data.tenant, kind=kind, recipient=recipient,
            facts={"waiting_for": f"partner {data.system}"},
            dedup_key=f"{data.request_id}:{kind.value}:{recipient.value}:partner-{data.system}-{key}",
        )
        try:
            await run_bookkeeping("dsr.notify", note, QUICK, result_type=NotificationResult)
        except ActivityError:
            workflow.logger.warning("partner wait: notification failed", extra={"kind": kind.value})

    @workflow.signal(name="partner_status")
    def partner_status(self, status: PartnerStatus) -> None:
        """A status from the partner's verified callback or a person's confirmation; idempotent.

        Statuses after a terminal one, and statuses for another reference, are ignored.
        """
        progress = self._progress
        if progress is None:
            self._early.append(status)
            return
        progress.callbacks += 1
        if self._terminal is not None:
            return
        if status.reference is not None and status.reference != self._reference:
            return
        progress.status = status.status
        if status.status == "completed":
            self._terminal = "completed"
            progress.via = "callback"
            progress.completed_at = status.received_at
            progress.completed_by = status.actor
        elif status.status == "cancelled":
            self._terminal = "cancelled"

    @workflow.query
    def progress(self) -> PartnerWaitProgress | None:
        """Where the wait stands; None before the workflow's first task ran."""
        return self._progress
