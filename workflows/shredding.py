"""Crypto-shredding a finished request or dispute: its export bundle deleted, its data key destroyed, a summary kept.

Started by the request workflow when it ends (``ParentClosePolicy.ABANDON``: it outlives its parent), with
the id ``shred/<request id>``, so that its own payloads are sealed under the ``shred`` key scope and not the
request's, which it destroys. It sleeps durably until ``shred_at`` (default 30 days after the end, enough for
the subject to download the export), then calls ``dsr.shred_request``: delete the bundle and check that it is
gone, destroy the request's data key, record the evidence. From then on nobody can decrypt the request's
Temporal history; the API answers the request's status from this workflow's result, the non-personal
summary (:func:`summary_of`). A dispute is shredded the same way when it closes (its identities and grounds
are in its history; :func:`dispute_summary_of` keeps the facts); its follow-up request has its own key and
its own shredding.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.messages import DisputeStatus
from workflows.models import RequestStatus

SHREDDING_WORKFLOW = "ShreddingWorkflow"
REMOVED = "(removed when the request was shredded)"


def shredding_workflow_id(request_id: str) -> str:
    """The shredding workflow's id: outside the request's key scope (see module docstring)."""
    return f"shred/{request_id}"


class ShredInput(BaseModel):
    """What the shredding workflow needs: the when, and the summary to keep."""

    request_id: str
    tenant: str
    shred_at: datetime
    summary: RequestStatus | DisputeStatus = Field(
        description="The request's (or dispute's) final status without free text (summary_of, dispute_summary_of).")


class ShredTask(BaseModel):
    """Input of ``dsr.shred_request``."""

    request_id: str
    tenant: str


class ShredOutcome(BaseModel):
    """What ``dsr.shred_request`` did."""

    bundle_files_deleted: int = 0
    key_destroyed: bool = Field(description="False when it had been destroyed before (a retried run).")
    shredded_at: datetime


def summary_of(status: RequestStatus) -> RequestStatus:
    """The request's status without the free text people typed (reasons), which may name someone.

    What stays: ids, kind, steps and dates, gates as facts (who decided, when, approve or reject, the extension's
    new date), per system the counts and the legal grounds of what was retained, the bundle's checksum.
    """
    summary = status.model_copy(deep=True)
    summary.outcome_reason = None
    for recorded in (summary.decision, summary.extension, summary.cancellation, summary.objection, summary.lifting):
        if recorded is not None and getattr(recorded, "reason", None):
            recorded.reason = REMOVED  # type: ignore[union-attr]
    for system in summary.systems.values():
        if system.error is not None:
            system.error = REMOVED
    return summary


def dispute_summary_of(status: DisputeStatus) -> DisputeStatus:
    """The dispute's status without the free text people typed (the resolution's reason, error messages).

    What stays: ids, steps and dates, per system the counts restricted, the resolution as a fact (who, which
    outcome, when), the follow-up request's id.
    """
    summary = status.model_copy(deep=True)
    if summary.resolution is not None:
        summary.resolution.reason = REMOVED
    summary.failed = {name: REMOVED for name in summary.failed}
    return summary


SHRED: dict = {
    "start_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=10), backoff_coefficient=2.0, maximum_interval=timedelta(hours=1),
    ),
}


@workflow.defn(name=SHREDDING_WORKFLOW)
class ShreddingWorkflow:
    """Waits until ``shred_at``, shreds the request, and returns its non-personal summary."""

    def __init__(self) -> None:
        self._summary: RequestStatus | DisputeStatus | None = None

    @workflow.run
    async def run(self, data: ShredInput) -> RequestStatus | DisputeStatus:
        """Sleep, shred, and keep the summary (the result the API shows for a shredded request)."""
        self._summary = data.summary
        wait = data.shred_at - workflow.now()
        if wait > timedelta(0):
            await workflow.sleep(wait)
        outcome = await workflow.execute_activity(
            "dsr.shred_request", ShredTask(request_id=data.request_id, tenant=data.tenant),
            result_type=ShredOutcome, **SHRED,
        )
        self._summary.shredded_at = outcome.shredded_at
        if isinstance(self._summary, RequestStatus) and self._summary.bundle is not None:
            self._summary.bundle.location = "(deleted)"
        return self._summary

    @workflow.query
    def status(self) -> RequestStatus | DisputeStatus | None:
        """The summary; ``shredded_at`` is set once the request was shredded."""
        return self._summary
