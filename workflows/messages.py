"""Models for notifications, per-subject coordination and disputes.

Like ``workflows.models`` these cross the workflow boundary and are encrypted by
the payload codec; identities appear only where a message must reach the subject.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from workflows.models import RequestDetails, RequestKind, SubjectIdentities


class NotificationKind(StrEnum):
    """What a notification says (privacy policy 6 and 7.1; GDPR Art. 12, 18(3), 19)."""

    RECEIPT = "receipt"
    EXTENSION = "extension"
    REJECTION = "rejection"
    COMPLETION = "completion"
    CANCELLATION = "cancellation"
    UNVERIFIED = "unverified"
    RESTRICTION_APPLIED = "restriction_applied"
    RESTRICTION_LIFT_NOTICE = "restriction_lift_notice"
    RESTRICTION_LIFTED = "restriction_lifted"
    ADMIN_REMINDER = "admin_reminder"
    ADMIN_OBJECTION_WINDOW = "admin_objection_window"
    ESCALATION = "escalation"
    BACKUPS_PENDING = "backups_pending"
    """Erased from live systems; backup copies are beyond use and will be gone by a date (UK regulator's view)."""


class Recipient(StrEnum):
    """Who is told: the subject, the tenant's administrator, or the privacy office."""

    SUBJECT = "subject"
    ADMIN = "admin"
    PRIVACY_OFFICE = "privacy_office"


class Notification(BaseModel):
    """Input of the ``dsr.notify`` activity.

    ``identities`` is set only for the subject; administrators and the privacy
    office are found in the tenant's configuration. ``facts`` holds what the
    message needs (due date, reason, link, counts), never rows of data.
    """

    request_id: str
    tenant: str
    kind: NotificationKind
    recipient: Recipient
    request_kind: RequestKind | None = None
    identities: SubjectIdentities | None = None
    facts: dict[str, Any] = Field(default_factory=dict)
    dedup_key: str = Field(description="Same key, same message: a retried activity sends once.")


class NotificationResult(BaseModel):
    """What the notifier did; ``skipped`` when no address is configured for the recipient."""

    sent: bool
    outbox_id: int | None = None
    skipped_reason: str | None = None


# --- per-subject coordination (workflows/subject.py) -------------------------------------------

SUBJECT_WORKFLOW = "SubjectWorkflow"


def subject_workflow_id(tenant: str, subject_key: str) -> str:
    """The subject coordinator's workflow id: opaque (a keyed hash), never an identity."""
    return f"subj_{tenant}_{subject_key}"


class LockRequest(BaseModel):
    """Signal ``acquire``: a workflow asks to change the subject's data."""

    workflow_id: str
    kind: RequestKind | Literal["dispute"]


class LockRelease(BaseModel):
    """Signal ``release``: the holder (or a waiter giving up) is done."""

    workflow_id: str


class RestrictionChange(BaseModel):
    """Signals ``restricted`` / ``unrestricted``: a dispute holds the subject's processing restricted."""

    dispute_id: str


LOCK_GRANTED_SIGNAL = "lock_granted"
"""Signal the subject coordinator sends to a waiting workflow when it may proceed."""


class SubjectInput(BaseModel):
    """Input of the subject coordinator.

    A client that starts it (signal-with-start from the API, or a workflow starting it as a child) names the
    subject; a workflow that starts it also puts its own ``acquire`` (or a dispute its ``restricted``) here, since
    a workflow cannot signal-with-start. On continue-as-new the coordinator carries its whole state in it.
    """

    tenant: str
    subject_key: str = Field(pattern=r"^[a-z2-7]{16,64}$", description="Opaque keyed hash, never an identity.")
    holder: LockRequest | None = Field(default=None, description="Carried over: who holds the lock.")
    waiting: list[LockRequest] = Field(default_factory=list, description="Waiters, first come first served.")
    restricted_by: list[str] = Field(default_factory=list, description="Disputes restricting the subject.")


class SubjectState(BaseModel):
    """Query ``state`` of the subject coordinator."""

    holder: str | None = None
    waiting: list[str] = Field(default_factory=list)
    restricted_by: list[str] = Field(default_factory=list)


# --- disputes (workflows/dispute.py) ---------------------------------------------------------------

DISPUTE_WORKFLOW = "DisputeWorkflow"


class DisputeInput(BaseModel):
    """A dispute about whether the company may keep using a subject's data (policy 6.1.4, Art. 18(1))."""

    id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    tenant: str
    identities: SubjectIdentities
    subject_key: str = Field(pattern=r"^[a-z2-7]{16,64}$")
    opened_by: str
    grounds: str = Field(min_length=1, max_length=2000)
    requested_kind: RequestKind = Field(
        default=RequestKind.ERASURE, description="What the subject asked for; it proceeds if they prevail."
    )
    notice_days: int = Field(default=14, ge=0, le=90, description="Notice before a restriction is lifted (18(3)).")
    opened_at: datetime
    shred_after_days: int | None = Field(
        default=None, ge=0, le=3650,
        description="Days after the dispute closes until its data key is destroyed (crypto-shredding, "
                    "workflows/shredding.py); None keeps it.",
    )
    details: RequestDetails = Field(
        default_factory=RequestDetails,
        description="What the follow-up request needs when the subject prevails (a rectification's corrections, "
                    "an objection's purpose).",
    )


class DisputeResolution(BaseModel):
    """Update ``resolve``: an administrator's decision on the dispute."""

    actor: str = Field(min_length=1, max_length=200)
    outcome: Literal["subject_prevails", "company_prevails"]
    reason: str = Field(min_length=1, max_length=2000)
    tenant: str | None = None


class DisputeStep(StrEnum):
    """Where a dispute is."""

    RESTRICTING = "restricting"
    RESTRICTED = "restricted"
    NOTICE_PERIOD = "notice_period"
    LIFTING = "lifting"
    FOLLOW_UP = "follow_up"
    CLOSED = "closed"


class DisputeStatus(BaseModel):
    """Query ``status`` and result of a dispute."""

    id: str
    tenant: str
    step: DisputeStep
    opened_at: datetime
    restricted: dict[str, dict[str, int]] = Field(default_factory=dict, description="Per system, records restricted.")
    not_applicable: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)
    resolution: DisputeResolution | None = None
    resolved_at: datetime | None = None
    subject_notified_at: datetime | None = None
    lifted_at: datetime | None = None
    follow_up_request_id: str | None = None
    shredded_at: datetime | None = Field(
        default=None, description="When the dispute's data key was destroyed; only its summary remains.")
