"""Pydantic models that cross the workflow boundary: inputs, updates, queries, results.

Everything here travels through Temporal history, encrypted by the payload
codec. Bulk data never does: exports travel as a reference (claim check).
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, EmailStr, Field, field_validator, model_validator

from connectors.contract import RetainedItem


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


# The kinds the orchestrator runs end to end today; the others are refused at the door.
SUPPORTED_KINDS = frozenset({RequestKind.ACCESS, RequestKind.EXPORT, RequestKind.ERASURE})


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


class DsrRequest(BaseModel):
    """One data subject request: the workflow's input."""

    id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                    description="Opaque id; never derived from an identity.")
    tenant: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    kind: RequestKind
    identities: SubjectIdentities
    verified_by: str | None = Field(default=None, description="How identity was verified, e.g. 'portal-login'.")
    approval_required: bool = Field(default=True, description="Whether the tenant's administrator must approve.")
    received_at: datetime

    @field_validator("received_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("received_at must carry a time zone")
        return v


class Step(StrEnum):
    """Where a request is in its life."""

    RECEIVED = "received"
    AWAITING_APPROVAL = "awaiting_approval"
    LOCATING = "locating"
    EXECUTING = "executing"
    VERIFYING = "verifying"
    DELIVERING = "delivering"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL_STEPS = frozenset({Step.COMPLETED, Step.REJECTED, Step.FAILED})


class Decision(BaseModel):
    """An administrator's decision on the approval gate (the ``decide`` update)."""

    actor: str = Field(min_length=1, max_length=200, description="Who decided (token or user name, not the subject).")
    outcome: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=2000)
    tenant: str | None = Field(default=None, description="The deciding admin's tenant; must match the request's.")

    @model_validator(mode="after")
    def _reason_for_rejection(self) -> Decision:
        if self.outcome == "reject" and not self.reason.strip():
            raise ValueError("a rejection needs a reason (GDPR Art. 12(4))")
        return self


class RecordedDecision(Decision):
    """A decision as the workflow recorded it."""

    decided_at: datetime


class SystemState(StrEnum):
    """Progress of one system within a request."""

    PENDING = "pending"
    LOCATED = "located"
    DONE = "done"
    NOT_APPLICABLE = "not_applicable"
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
    due_at: datetime
    decision: RecordedDecision | None = None
    systems: dict[str, SystemStatus] = Field(default_factory=dict)
    bundle: BundleRef | None = None
    outcome_reason: str | None = None
    completed_at: datetime | None = None
    overdue: bool = Field(default=False, description="The legal deadline passed before the request finished.")


class SystemInfo(BaseModel):
    """A configured system as the planner reports it."""

    name: str
    type: str
    capabilities: list[str]


class SystemTask(BaseModel):
    """Input of a per-system activity."""

    request_id: str
    system: str
    identities: dict[str, str]


class AuditEvent(BaseModel):
    """One step's evidence. Never personal data: references, counts and outcomes only."""

    request_id: str
    tenant: str
    event: str
    system: str | None = None
    outcome: str = "ok"
    actor: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class DeliverInput(BaseModel):
    """Input of the deliver activity: the parts written by each system's export."""

    request_id: str
    parts: list[str]


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
