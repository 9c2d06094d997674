"""The gates of a request, as routes: decision, verification, extension, cancellation, objection.

Each route sends one update of ``DataSubjectRequestWorkflow`` through :func:`api.updates.update_handler`.
The actor is always the calling token's name and the tenant the token's, never taken from the body
(a privacy officer of every tenant sends no tenant: the API has already checked which requests they may reach).

| Route                                    | Roles          | Update   | Body                              |
|------------------------------------------|----------------|----------|-----------------------------------|
| ``POST /v1/requests/{id}/decision``      | admin          | decide   | ``{"outcome", "reason"}``         |
| ``POST /v1/requests/{id}/verification``  | portal, admin  | verify   | ``{"method"}``                    |
| ``POST /v1/requests/{id}/extension``     | admin, privacy_officer | extend | ``{"months": 1 or 2, "reason"}`` |
| ``POST /v1/requests/{id}/cancellation``  | portal, admin  | cancel   | ``{"reason"?}``                   |
| ``POST /v1/requests/{id}/objection``     | admin          | object   | ``{"reason"}``                    |
| ``POST /v1/requests/{id}/retry``         | admin          | retry_system | ``{"system"}``                |
| ``POST /v1/requests/{id}/lifting``       | admin          | lift     | ``{"reason"}``                    |
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.auth import Principal
from api.requests_routes import REQUESTS
from api.updates import UpdateRoute
from workflows.models import SystemStatus
from workflows.updates import (
    AdminObjection,
    Cancellation,
    Decision,
    Extension,
    Lifting,
    RecordedAdminObjection,
    RecordedCancellation,
    RecordedDecision,
    RecordedExtension,
    RecordedLifting,
    RecordedVerification,
    SystemRetry,
    Verification,
)


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be blank")
    return value


class DecisionBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/decision``: approve, or reject with a reason."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=2000, validate_default=True,
                        description="Required for a rejection; the subject is told it (GDPR Art. 12(4)).")

    @field_validator("reason")
    @classmethod
    def _reason_for_rejection(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("outcome") == "reject" and not v.strip():
            raise ValueError("a rejection needs a reason (GDPR Art. 12(4))")
        return v


class VerificationBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/verification``: how the subject's identity was confirmed."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(min_length=1, max_length=100, description="e.g. 'email-link' or 'id-document'.")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _not_blank(v, "method")


class ExtensionBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/extension``: once, by one or two further months (GDPR Art. 12(3))."""

    model_config = ConfigDict(extra="forbid")

    months: Literal[1, 2]
    reason: str = Field(min_length=1, max_length=2000, description="Why; the subject is told.")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return _not_blank(v, "an extension's reason")


class CancellationBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/cancellation``: the subject withdraws the request before execution."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


class ObjectionBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/objection``: the administrator objects to a restriction (policy 7.1)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="Recorded with the objection.")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return _not_blank(v, "an objection's reason")


class RetryBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/retry``: the system that needs attention to run again from its failed step."""

    model_config = ConfigDict(extra="forbid")

    system: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")


class LiftingBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/lifting``: end a restriction; the subject is told first (Art. 18(3))."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="Why the restriction ends; the subject is told.")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return _not_blank(v, "a lifting's reason")


def _lifting(body: LiftingBody, who: Principal) -> Lifting:
    return Lifting(actor=who.name, reason=body.reason, tenant=who.tenant)


def _retry(body: RetryBody, who: Principal) -> SystemRetry:
    return SystemRetry(actor=who.name, system=body.system, tenant=who.tenant)


def _decision(body: DecisionBody, who: Principal) -> Decision:
    return Decision(actor=who.name, outcome=body.outcome, reason=body.reason, tenant=who.tenant)


def _verification(body: VerificationBody, who: Principal) -> Verification:
    return Verification(actor=who.name, method=body.method)


def _extension(body: ExtensionBody, who: Principal) -> Extension:
    return Extension(actor=who.name, months=body.months, reason=body.reason, tenant=who.tenant)


def _cancellation(body: CancellationBody, who: Principal) -> Cancellation:
    return Cancellation(actor=who.name, reason=body.reason)


def _objection(body: ObjectionBody, who: Principal) -> AdminObjection:
    return AdminObjection(actor=who.name, reason=body.reason, tenant=who.tenant)


DECISION = UpdateRoute(REQUESTS, "decide", "decision", ("admin",), DecisionBody, _decision, RecordedDecision)
VERIFICATION = UpdateRoute(REQUESTS, "verify", "verification", ("portal", "admin"), VerificationBody, _verification,
                           RecordedVerification)
EXTENSION = UpdateRoute(REQUESTS, "extend", "extension", ("admin", "privacy_officer"), ExtensionBody, _extension,
                        RecordedExtension)
CANCELLATION = UpdateRoute(REQUESTS, "cancel", "cancellation", ("portal", "admin"), CancellationBody, _cancellation,
                           RecordedCancellation)
OBJECTION = UpdateRoute(REQUESTS, "object", "objection", ("admin",), ObjectionBody, _objection,
                        RecordedAdminObjection)

LIFTING = UpdateRoute(REQUESTS, "lift", "lifting", ("admin",), LiftingBody, _lifting, RecordedLifting)
RETRY = UpdateRoute(REQUESTS, "retry_system", "retry", ("admin",), RetryBody, _retry, SystemStatus)

REQUEST_UPDATES: dict[str, UpdateRoute] = {
    "/v1/requests/{id}/decision": DECISION,
    "/v1/requests/{id}/verification": VERIFICATION,
    "/v1/requests/{id}/extension": EXTENSION,
    "/v1/requests/{id}/cancellation": CANCELLATION,
    "/v1/requests/{id}/objection": OBJECTION,
    "/v1/requests/{id}/retry": RETRY,
    "/v1/requests/{id}/lifting": LIFTING,
}
"""Each request update route's path and declaration."""
