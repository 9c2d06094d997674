"""The rules of the gates before execution: identity verification, approval, extension, cancellation.

Pure functions over the request and its status: no I/O and no clock (the workflow passes
``workflow.now()``), so that the workflow's update validators can call them. A validator
refuses an update by raising ``ValueError`` with a message meant for the caller; a refused
update leaves no trace in the workflow's history.
"""

from __future__ import annotations

from datetime import datetime

from workflows.models import (
    CANCELLABLE_STEPS,
    TERMINAL_STEPS,
    DsrRequest,
    RequestKind,
    RequestStatus,
    Step,
    SystemState,
    end_of_day,
    one_calendar_month_after,
)
from workflows.updates import AdminObjection, Decision, Extension, Lifting, SystemRetry


def due_date(clock_start: datetime, months: int = 1) -> datetime:
    """The end of the day ``months`` calendar months after ``clock_start`` (GDPR Art. 12(3))."""
    return end_of_day(one_calendar_month_after(clock_start, months))


def clock_start(status: RequestStatus) -> datetime:
    """When the legal clock started: at receipt, or at verification when identity was in doubt (Art. 12(6))."""
    return status.verified_at or status.received_at


def clock_running(request: DsrRequest, status: RequestStatus) -> bool:
    """Whether the legal clock runs: the request arrived verified or has been verified since."""
    return request.identity_verified or status.verified_at is not None


def check_verification(request: DsrRequest, status: RequestStatus) -> None:
    """Refuse a ``verify`` update unless the request is waiting for exactly that."""
    if request.identity_verified or status.verification is not None:
        raise ValueError("identity is already verified")
    if status.cancellation is not None:
        raise ValueError("the request was cancelled")
    if status.step != Step.AWAITING_VERIFICATION:
        raise ValueError(f"not awaiting verification (step: {status.step.value})")


def check_decision(request: DsrRequest, status: RequestStatus, decision: Decision) -> None:
    """Refuse a ``decide`` update unless the approval gate is open and the admin is the tenant's."""
    if not request.approval_required:
        raise ValueError("this request does not need approval")
    if status.decision is not None:
        raise ValueError(f"already decided: {status.decision.outcome}")
    if status.cancellation is not None:
        raise ValueError("the request was cancelled")
    if status.step != Step.AWAITING_APPROVAL:
        raise ValueError(f"not awaiting approval (step: {status.step.value})")
    if decision.tenant is not None and decision.tenant != request.tenant:
        raise ValueError("an administrator decides only for their own tenant")


def check_extension(request: DsrRequest, status: RequestStatus, extension: Extension, now: datetime) -> None:
    """Refuse an ``extend`` update unless it is the first, within the first month, of a running request."""
    if extension.tenant is not None and extension.tenant != request.tenant:
        raise ValueError("an administrator extends only their own tenant's requests")
    if status.step in TERMINAL_STEPS or status.cancellation is not None:
        raise ValueError(f"the request has finished (step: {status.step.value})")
    if status.extension is not None:
        raise ValueError(f"already extended once, to {status.extension.new_due_at.isoformat()}; "
                         "a request can be extended only once (GDPR Art. 12(3))")
    if not clock_running(request, status):
        raise ValueError("identity is not verified yet, so the legal clock has not started; nothing to extend")
    first_month_ends = due_date(clock_start(status))
    if now > first_month_ends:
        raise ValueError(f"the first month ended at {first_month_ends.isoformat()}; "
                         "an extension must be decided within it (GDPR Art. 12(3))")


def check_objection(request: DsrRequest, status: RequestStatus, objection: AdminObjection) -> None:
    """Refuse an ``object`` update unless the restriction's objection window is open."""
    if objection.tenant is not None and objection.tenant != request.tenant:
        raise ValueError("an administrator objects only for their own tenant")
    if request.kind != RequestKind.RESTRICTION or not request.policy.organisation_managed:
        raise ValueError("only a restriction of an organisation-managed account can be objected to")
    if status.objection is not None:
        raise ValueError("an objection is already recorded")
    if status.step != Step.OBJECTION_WINDOW:
        raise ValueError(f"the objection window is not open (step: {status.step.value})")


def check_cancellation(status: RequestStatus) -> None:
    """Refuse a ``cancel`` update once execution has started (or the request is over)."""
    if status.cancellation is not None:
        raise ValueError("the request is already cancelled")
    if status.step in TERMINAL_STEPS:
        raise ValueError(f"the request has finished (step: {status.step.value})")
    if status.step not in CANCELLABLE_STEPS:
        raise ValueError("execution has started; a request cannot be cancelled once systems are being changed")


def check_lifting(request: DsrRequest, status: RequestStatus, lifting: Lifting) -> None:
    """Refuse a ``lift`` update unless this is a restriction in force and not already being lifted."""
    if lifting.tenant is not None and lifting.tenant != request.tenant:
        raise ValueError("an administrator lifts only their own tenant's restrictions")
    if request.kind != RequestKind.RESTRICTION:
        raise ValueError("only a restriction can be lifted")
    if status.lifting is not None:
        raise ValueError(f"already being lifted, on {status.lifting.lift_on.isoformat()}")
    if status.step != Step.RESTRICTED:
        raise ValueError(f"no restriction is in force (step: {status.step.value})")


def check_retry(request: DsrRequest, status: RequestStatus, retry: SystemRetry, queued: list[str]) -> None:
    """Refuse a ``retry_system`` update unless that system needs attention and is not queued already."""
    if retry.tenant is not None and retry.tenant != request.tenant:
        raise ValueError("an administrator retries only their own tenant's requests")
    st = status.systems.get(retry.system)
    if st is None:
        raise ValueError("no such system in this request")
    if st.state != SystemState.NEEDS_ATTENTION:
        raise ValueError(f"this system does not need attention (state: {st.state.value})")
    if retry.system in queued:
        raise ValueError("a retry of this system is already queued")
