"""Inputs of the workflows' updates (the decisions people take) and the forms the workflows record.

Each update's rules live in ``workflows.gates``; a refused update leaves no trace in history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator


class Verification(BaseModel):
    """Confirmation of an unverified subject's identity (the ``verify`` update; GDPR Art. 12(6))."""

    actor: str = Field(min_length=1, max_length=200, description="Who verified (operator or service, not the subject).")
    method: str = Field(min_length=1, max_length=100, description="How, e.g. 'email-link' or 'id-document'.")

    @field_validator("actor", "method")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v


class RecordedVerification(Verification):
    """A verification as the workflow recorded it."""

    verified_at: datetime


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


class Extension(BaseModel):
    """An administrator's extension of the deadline (the ``extend`` update; GDPR Art. 12(3)).

    Allowed once, by one or two further months, and only within the first month.
    """

    actor: str = Field(min_length=1, max_length=200, description="Who extended (token or user name).")
    months: int = Field(ge=1, le=2, description="Further months on top of the first one (Art. 12(3): at most two).")
    reason: str = Field(min_length=1, max_length=2000, description="Why; the subject is told (Art. 12(3)).")
    tenant: str | None = Field(default=None, description="The extending admin's tenant; must match the request's.")

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("an extension needs a reason (GDPR Art. 12(3))")
        return v


class RecordedExtension(Extension):
    """An extension as the workflow recorded it."""

    extended_at: datetime
    original_due_at: datetime
    new_due_at: datetime


class Cancellation(BaseModel):
    """The subject's withdrawal of the request before execution (the ``cancel`` update)."""

    actor: str = Field(min_length=1, max_length=200, description="Who cancelled (the portal or support agent).")
    reason: str | None = Field(default=None, max_length=2000)


class RecordedCancellation(Cancellation):
    """A cancellation as the workflow recorded it."""

    cancelled_at: datetime


class AdminObjection(BaseModel):
    """Update ``object``: the organisation's administrator objects to a restriction (policy 7.1)."""

    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000, description="Recorded with the objection.")
    tenant: str | None = Field(default=None, description="The objecting admin's tenant; must match the request's.")


class RecordedAdminObjection(AdminObjection):
    """An objection as the workflow recorded it."""

    objected_at: datetime


class Lifting(BaseModel):
    """Update ``lift``: an administrator ends a restriction; the subject is told before it is lifted (18(3))."""

    actor: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000, description="Why the restriction ends; the subject is told.")
    tenant: str | None = None


class RecordedLifting(Lifting):
    """A lifting as the workflow recorded it."""

    decided_at: datetime
    lift_on: datetime


class SystemRetry(BaseModel):
    """Update ``retry_system``: an administrator asks a system that needs attention to try again."""

    actor: str = Field(min_length=1, max_length=200)
    system: str = Field(min_length=1, max_length=200)
    tenant: str | None = Field(default=None, description="The admin's tenant; must match the request's.")
