"""Waiting for a system's backups to expire after an erasure, then checking that they are gone.

A child of the request workflow, started when a system's erasure returns ``completes_at`` (backups put beyond
use that only disappear when they expire): sleep durably until then, call ``dsr.verify_erasure`` for the
system, and while something remains (a storage lifecycle rule that has not run yet, say) look again every
``retry_every_days`` up to ``max_retries`` times. The result is the last verification: ``remaining`` non-empty
means the backups did not go and someone must look (the parent marks the system as needing attention).

A verification that fails after its retries (S3 unreachable) is treated like backups that remain: it is tried
again at the next check, and the failure is raised only at the last one; an error no retry can fix (bad
configuration) is raised at once. Deterministic: the activity is called by name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from connectors.contract import VerificationOutcome
from workflows.tasks import BackupExpiryInput, SystemTask

BACKUP_EXPIRY_WORKFLOW = "BackupExpiryWorkflow"
NON_RETRYABLE = ["ConfigurationError", "UnsupportedError", "ValidationError"]
VERIFY: dict = {
    "start_to_close_timeout": timedelta(minutes=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=5),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=5),
        maximum_attempts=8,
        non_retryable_error_types=NON_RETRYABLE,
    ),
}


class BackupExpiryProgress(BaseModel):
    """Where the wait stands (query ``progress``)."""

    completes_at: datetime = Field(description="When the newest affected backup expires.")
    checks: int = Field(default=0, description="Verifications run so far.")
    next_check_at: datetime | None = Field(default=None, description="None once finished.")
    remaining: dict[str, int] = Field(default_factory=dict, description="What the last check found remaining.")
    last_error: str | None = Field(default=None, description="Type of the last check's failure, if it failed.")


def backup_expiry_workflow_id(request_id: str, system: str) -> str:
    """The child's id: the request's (opaque) id and the system's name, never personal data."""
    return f"{request_id}/backups/{system}"


@workflow.defn(name=BACKUP_EXPIRY_WORKFLOW)
class BackupExpiryWorkflow:
    """Sleeps until the backups expire, then verifies they are gone, retrying daily while some remain."""

    def __init__(self) -> None:
        self._progress: BackupExpiryProgress | None = None

    @workflow.run
    async def run(self, data: BackupExpiryInput) -> VerificationOutcome:
        completes_at = data.completes_at if data.completes_at.tzinfo else data.completes_at.replace(tzinfo=UTC)
        progress = self._progress = BackupExpiryProgress(completes_at=completes_at, next_check_at=completes_at)
        task = SystemTask(request_id=data.request_id, system=data.system, identities=data.identities)
        await _sleep_until(completes_at)
        every = timedelta(days=data.retry_every_days)
        for attempt in range(data.max_retries + 1):
            last = attempt == data.max_retries
            progress.checks += 1
            try:
                outcome = await workflow.execute_activity(
                    "dsr.verify_erasure", task, result_type=VerificationOutcome, **VERIFY)
            except ActivityError as err:
                cause = err.cause
                progress.last_error = getattr(cause, "type", None) or type(cause).__name__
                if last or (isinstance(cause, ApplicationError) and cause.non_retryable):
                    progress.next_check_at = None
                    raise
            else:
                progress.last_error = None
                progress.remaining = {k: v for k, v in outcome.remaining.items() if v}
                if outcome.ok or last:
                    progress.next_check_at = None
                    return outcome
            progress.next_check_at = workflow.now() + every
            await _sleep_until(progress.next_check_at)
        raise AssertionError("unreachable")  # the loop returns or raises at its last check

    @workflow.query
    def progress(self) -> BackupExpiryProgress | None:
        """Where the wait stands; None before the workflow's first task ran."""
        return self._progress


async def _sleep_until(at: datetime) -> None:
    delay = at - workflow.now()
    if delay > timedelta(0):
        await workflow.sleep(delay)
