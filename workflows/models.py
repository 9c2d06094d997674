"""Pydantic models that cross the workflow boundary: inputs, updates, queries, results.

Everything here travels through Temporal history, encrypted by the payload
codec. Bulk data never does: exports travel as a reference (claim check).
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from connectors.contract import ExternalWait, RetainedItem
from workflows.updates import (
    RecordedAdminObjection,
    RecordedCancellation,
    RecordedDecision,
    RecordedExtension,
    RecordedLifting,
    RecordedVerification,
)


class RequestKind(StrEnum):
    """The rights a subject can exercise (privacy policy, section 6)."""

    ACCESS = "access"
    EXPORT = "export"
    ERASURE = "erasure"
    RECTIFICATION = "rectification"
    RESTRICTION = "restriction"
    OBJECTION = "objection"
    OPT_OUT = "opt_out"
    CONSENT_WITHDRAWAL = "consent_withdrawal"
    DEACTIVATION = "deactivation"


# The kinds the orchestrator runs end to end.
SUPPORTED_KINDS = frozenset(RequestKind)

# The connector capability each kind needs; a system without it is reported "not applicable".
KIND_CAPABILITY: dict[RequestKind, str] = {
    RequestKind.ACCESS: "export",
    RequestKind.EXPORT: "export",
    RequestKind.ERASURE: "erase",
    RequestKind.RECTIFICATION: "rectify",
    RequestKind.RESTRICTION: "restrict",
    RequestKind.OBJECTION: "stop_processing",
    RequestKind.OPT_OUT: "stop_processing",
    RequestKind.CONSENT_WITHDRAWAL: "stop_processing",
    RequestKind.DEACTIVATION: "deactivate",
}

# Kinds that change the subject's data or its processing: one at a time per subject.
MUTATING_KINDS = frozenset(set(RequestKind) - {RequestKind.ACCESS, RequestKind.EXPORT})

MARKETING = "marketing"
"""The purpose named by a marketing opt-out; an objection to it is always granted (GDPR Art. 21(3))."""


class RequestDetails(BaseModel):
    """What some kinds carry besides the identities."""

    model_config = ConfigDict(extra="forbid")

    corrections: dict[str, str] = Field(
        default_factory=dict,
        description="Rectification: corrected values keyed by data category (e.g. 'user.name'); "
                    "each connector writes them to its declared fields of that category only.",
    )
    purpose: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_.-]*$",
        description="Objection, opt-out and consent withdrawal: the processing purpose to stop (e.g. 'marketing').",
    )
    grounds: str | None = Field(
        default=None, max_length=2000,
        description="Restriction or objection: the subject's grounds, as free text (stays encrypted in history).",
    )

    @field_validator("corrections")
    @classmethod
    def _categories(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key.startswith("user.") and key != "user":
                raise ValueError("corrections are keyed by a 'user.*' data category")
            if len(value) > 1000:
                raise ValueError("a corrected value is at most 1000 characters")
        return v


class RequestPolicy(BaseModel):
    """The tenant's policy as it applies to one request (copied in at receipt, so a request keeps its rules)."""

    organisation_managed: bool = Field(default=False, description="The account is managed by an organisation.")
    objection_window_days: int = Field(
        default=7, ge=0, le=60,
        description="Restriction of an organisation-managed account: days the administrator may object (7.1).",
    )
    reminder_every_days: int = Field(default=3, ge=1, le=30, description="Reminders to the admin while pending.")
    escalate_days_before_due: int = Field(
        default=7, ge=0, le=60, description="Escalate to the privacy office when the due date is this close."
    )
    lift_notice_days: int = Field(
        default=14, ge=0, le=90, description="Restriction: days between telling the subject and lifting (18(3))."
    )


class SubjectIdentities(BaseModel):
    """How the subject is known to the company's systems. At least one is required."""

    email: EmailStr | None = None
    user_id: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _at_least_one(self) -> SubjectIdentities:
        if not self.email and not self.user_id:
            raise ValueError("at least one identity (email or user_id) is required")
        return self

    def as_dict(self) -> dict[str, str]:
        """Identity type to value, without the empty ones; emails are lower-cased."""
        out: dict[str, str] = {}
        if self.email:
            out["email"] = str(self.email).lower()
        if self.user_id:
            out["user_id"] = self.user_id
        return out


class StepTimeouts(BaseModel):
    """How long an activity may run before Temporal gives it to another worker (a worker that died holds it).

    Copied into each request from ``[temporal]`` at receipt, so that a running request keeps its timeouts.
    """

    quick_seconds: int = Field(default=300, ge=5, le=86400, description="Start-to-close of the short steps.")
    bulk_heartbeat_seconds: int = Field(
        default=120, ge=5, le=3600, description="Heartbeat timeout of exports and erasures (they heartbeat per batch)."
    )


class DsrRequest(BaseModel):
    """One data subject request: the workflow's input."""

    id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                    description="Opaque id; never derived from an identity.")
    tenant: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    kind: RequestKind
    identities: SubjectIdentities
    verified_by: str | None = Field(default=None, description="How identity was verified, e.g. 'portal-login'.")
    identity_verified: bool = Field(
        default=True,
        description="False when the subject's identity is still in doubt (GDPR Art. 12(6), 11(2)): the portal sets "
                    "it for requests it could not verify, and the workflow then waits for the ``verify`` update "
                    "before anything else, with the legal clock stopped.",
    )
    verification_timeout_days: int = Field(
        default=14, ge=1, le=60,
        description="Days after receipt an unverified request waits for verification before it is closed.",
    )
    approval_required: bool = Field(default=True, description="Whether the tenant's administrator must approve.")
    timeouts: StepTimeouts = Field(default_factory=StepTimeouts)
    shred_after_days: int | None = Field(
        default=None, ge=0, le=3650,
        description="Days after the request ends until its data key and export bundle are destroyed "
                    "(crypto-shredding, workflows/shredding.py); None keeps them.",
    )
    received_at: datetime
    details: RequestDetails = Field(default_factory=RequestDetails)
    policy: RequestPolicy = Field(default_factory=RequestPolicy)
    subject_key: str | None = Field(
        default=None, pattern=r"^[a-z2-7]{16,64}$",
        description="Opaque keyed hash of the subject (set by the API): serialises changes to one subject. "
                    "Never the identity itself.",
    )

    @model_validator(mode="after")
    def _details_fit_kind(self) -> DsrRequest:
        if self.kind == RequestKind.RECTIFICATION and not self.details.corrections:
            raise ValueError("a rectification needs details.corrections")
        if self.kind in (RequestKind.OBJECTION, RequestKind.CONSENT_WITHDRAWAL) and not self.details.purpose:
            raise ValueError(f"{self.kind.value} needs details.purpose")
        if self.kind == RequestKind.OPT_OUT and self.details.purpose not in (None, MARKETING):
            raise ValueError("an opt-out is from marketing; use an objection for other purposes")
        return self

    @property
    def purpose(self) -> str | None:
        """The processing purpose a stop-processing kind names (opt-out: marketing)."""
        return MARKETING if self.kind == RequestKind.OPT_OUT else self.details.purpose

    @field_validator("received_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("received_at must carry a time zone")
        return v


class Step(StrEnum):
    """Where a request is in its life."""

    RECEIVED = "received"
    AWAITING_VERIFICATION = "awaiting_verification"
    AWAITING_APPROVAL = "awaiting_approval"
    OBJECTION_WINDOW = "objection_window"
    AWAITING_SUBJECT = "awaiting_subject"
    """Another change to the same subject runs first (or a dispute restricts an erasure)."""
    LOCATING = "locating"
    EXECUTING = "executing"
    VERIFYING = "verifying"
    DELIVERING = "delivering"
    NEEDS_ATTENTION = "needs_attention"
    """Some systems kept failing; the others are done. Waits for an administrator's retry."""
    RESTRICTED = "restricted"
    """A restriction is in force in the systems; it stays until an administrator lifts it (with notice)."""
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNVERIFIED = "unverified"


TERMINAL_STEPS = frozenset({Step.COMPLETED, Step.REJECTED, Step.FAILED, Step.CANCELLED, Step.UNVERIFIED})
# Before execution: nothing has been changed in any system yet, so the subject may still withdraw the request.
CANCELLABLE_STEPS = frozenset({
    Step.RECEIVED, Step.AWAITING_VERIFICATION, Step.AWAITING_APPROVAL, Step.OBJECTION_WINDOW, Step.AWAITING_SUBJECT,
})


class SystemState(StrEnum):
    """Progress of one system within a request."""

    PENDING = "pending"
    LOCATED = "located"
    DONE = "done"
    NOT_APPLICABLE = "not_applicable"
    NEEDS_ATTENTION = "needs_attention"
    """Kept failing: the error is shown and an administrator may retry this system alone."""
    AWAITING_PARTNER = "awaiting_partner"
    """A partner was asked; waiting (durably) for its signed callback, or a poll, to say it is done."""
    AWAITING_EXPIRY = "awaiting_expiry"
    """Erased what could be; the rest (backup copies) is beyond use until it expires, then verified gone."""
    FAILED = "failed"


class SystemStatus(BaseModel):
    """Per system: what was found, exported, erased and retained."""

    system: str
    type: str
    state: SystemState = SystemState.PENDING
    found: dict[str, int] = Field(default_factory=dict)
    exported: dict[str, int] = Field(default_factory=dict)
    masked: dict[str, int] = Field(default_factory=dict)
    deleted: dict[str, int] = Field(default_factory=dict)
    retained: list[RetainedItem] = Field(default_factory=list)
    remaining: dict[str, int] = Field(default_factory=dict)
    changed: dict[str, int] = Field(default_factory=dict, description="Rectified/restricted/... records.")
    failed_step: str | None = Field(default=None, description="Where the system stopped: a retry resumes there.")
    attempts: int = Field(default=1, description="Runs of this system, counting administrators' retries.")
    part: str | None = Field(default=None, description="Export-store prefix of this system's exported files.")
    external: ExternalWait | None = Field(default=None, description="A partner's reference and how it is awaited.")
    completes_at: datetime | None = Field(
        default=None, description="When this system's erasure completes (backups gone): the date the subject is told."
    )
    ignored: list[str] = Field(default_factory=list, description="Parts of the request this system does not hold.")
    error: str | None = None


class BundleRef(BaseModel):
    """Where the export bundle lives (claim check); the rows never enter history."""

    key: str
    sha256: str
    bytes: int
    files: int
    location: str = Field(description="Path or s3:// URL of the bundle, for operators.")


class RequestStatus(BaseModel):
    """The answer of the ``status`` query and the workflow's result."""

    id: str
    tenant: str
    kind: RequestKind
    step: Step
    received_at: datetime
    due_at: datetime = Field(
        description="End of the legal deadline; provisional while identity is unverified (the clock then waits)."
    )
    verified_at: datetime | None = Field(
        default=None, description="When an unverified request was verified; the legal clock runs from then."
    )
    verification: RecordedVerification | None = None
    extension: RecordedExtension | None = None
    decision: RecordedDecision | None = None
    cancellation: RecordedCancellation | None = None
    systems: dict[str, SystemStatus] = Field(default_factory=dict)
    bundle: BundleRef | None = None
    outcome_reason: str | None = None
    completed_at: datetime | None = None
    overdue: bool = Field(default=False, description="The legal deadline passed before the request finished.")
    objection: RecordedAdminObjection | None = Field(default=None, description="An admin's objection (7.1).")
    lifting: RecordedLifting | None = Field(default=None, description="Restriction: when and why it is lifted.")
    lifted_at: datetime | None = None
    reminders_sent: int = Field(default=0, description="Reminders sent to the administrator while pending.")
    escalated_at: datetime | None = Field(default=None, description="When the privacy office was alerted.")
    shredded_at: datetime | None = Field(
        default=None,
        description="When the request's data key was destroyed: this status is then the non-personal summary.",
    )


def one_calendar_month_after(start: datetime, months: int = 1) -> datetime:
    """The same calendar date ``months`` later, or that month's last day (GDPR Art. 12(3), UK reading).

    >>> one_calendar_month_after(datetime(2026, 1, 31, 10, 0))
    datetime.datetime(2026, 2, 28, 10, 0)
    """
    month_index = start.month - 1 + months
    year = start.year + month_index // 12
    month = month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def end_of_day(moment: datetime) -> datetime:
    """The last instant of ``moment``'s calendar day (deadlines run to the end of the day)."""
    return moment.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1, microseconds=-1)
