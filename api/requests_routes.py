"""Data subject requests: create one (any kind), read its status.

- ``POST /v1/requests`` starts ``DataSubjectRequestWorkflow`` with the request's opaque id as workflow id.
- ``GET /v1/requests/{id}`` answers the workflow's ``status`` query.

Nothing a subject submitted is ever logged or echoed in an error: identities and details reach
Temporal only inside the encrypted workflow input. To recognise a replayed ``Idempotency-Key``,
the workflow memo (encrypted too) carries HMAC fingerprints of the identities and of the rest of
the body, never the values themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import require_role
from api.common import (
    CLIENT,
    REQUEST_ID,
    SECRETS,
    SETTINGS,
    Resource,
    build_model,
    current_status,
    find_for_tenant,
    idempotency_key,
    json_response,
    parse_body,
    read_json,
    same_fingerprint,
)
from api.ids import (
    REQUEST_ID_PATTERN,
    content_fingerprint,
    idempotent_request_id,
    identity_fingerprint,
    initial_status,
    new_request_id,
    subject_key,
)
from api.problems import Problem
from api.starting import start_once
from workers.config import TenantSettings
from workflows.models import (
    MARKETING,
    DsrRequest,
    RequestDetails,
    RequestKind,
    RequestPolicy,
    RequestStatus,
    StepTimeouts,
    SubjectIdentities,
)
from workflows.search import received_attributes

WORKFLOW_TYPE = "DataSubjectRequestWorkflow"


def _initial_from_memo(request_id: str, memo: dict[str, Any]) -> RequestStatus | None:
    if not all(isinstance(memo.get(k), str) for k in ("tenant", "kind", "received_at")):
        return None
    received_at = datetime.fromisoformat(memo["received_at"])
    return initial_status(request_id, memo["tenant"], RequestKind(memo["kind"]), received_at)


REQUESTS = Resource(
    noun="request",
    workflow_type=WORKFLOW_TYPE,
    id_pattern=REQUEST_ID_PATTERN,
    status_type=RequestStatus,
    initial=_initial_from_memo,
)


class IdentitiesBody(SubjectIdentities):
    """The subject's identities as submitted; unknown identity types are refused."""

    model_config = ConfigDict(extra="forbid")


class CreateRequestBody(BaseModel):
    """Body of ``POST /v1/requests``. The tenant is the portal token's."""

    model_config = ConfigDict(extra="forbid")

    kind: RequestKind
    identities: IdentitiesBody
    verified: bool = Field(
        default=True,
        description="False when the portal could not verify the subject: the request then waits for "
                    "POST /v1/requests/{id}/verification, with the legal clock stopped (GDPR Art. 12(6)).",
    )
    verified_by: str | None = Field(default=None, min_length=1, max_length=200)
    details: RequestDetails = Field(
        default_factory=RequestDetails,
        description="corrections (rectification), purpose (objection, opt-out, consent withdrawal), grounds.",
    )
    tenant: str | None = Field(default=None, description="Optional; must be the token's tenant.")

    @model_validator(mode="after")
    def _verified_by_needs_verified(self) -> CreateRequestBody:
        if not self.verified and self.verified_by is not None:
            raise ValueError("verified_by names how identity was verified; it cannot be given with verified=false")
        return self


def needs_approval(kind: RequestKind, details: RequestDetails, policy: TenantSettings) -> bool:
    """Whether the tenant's administrator must approve a request of ``kind`` before it runs.

    As the tenant's policy says (``approval_required``), except for an objection to direct
    marketing and a marketing opt-out: the subject's right to stop direct marketing is absolute
    (GDPR Art. 21(2)-(3): "the personal data shall no longer be processed for such purposes"),
    so no administrator may hold it back, whatever the tenant configured.
    """
    if kind == RequestKind.OPT_OUT or (kind == RequestKind.OBJECTION and details.purpose == MARKETING):
        return False
    return kind in policy.approval_required


def check_details_fit(kind: RequestKind, details: RequestDetails) -> None:
    """Refuse (422) ``details`` that do not fit ``kind``, by the request model's own rule.

    For a dispute, whose follow-up request is built only when the subject prevails.
    """
    build_model(
        lambda: DsrRequest(id="details-check", tenant="check", kind=kind, identities=SubjectIdentities(user_id="x"),
                           received_at=datetime.now(UTC), details=details),
        "the details do not fit the requested kind",
    )


def request_policy(policy: TenantSettings) -> RequestPolicy:
    """The tenant's rules a request carries with it from receipt."""
    return RequestPolicy(
        organisation_managed=policy.organisation_managed,
        objection_window_days=policy.objection_window_days,
        reminder_every_days=policy.reminder_every_days,
        escalate_days_before_due=policy.escalate_days_before_due,
        lift_notice_days=policy.dispute_notice_days,
    )


def tenant_policy(request: web.Request, tenant: str) -> TenantSettings:
    """The configured policy of ``tenant``; 422 when the token's tenant is not configured."""
    policy = request.app[SETTINGS].tenant(tenant)
    if policy is None:
        raise Problem(422, "the token's tenant is not configured", slug="unknown-tenant", title="Unknown tenant")
    return policy


async def create_request(request: web.Request) -> web.Response:
    """``POST /v1/requests``: validate, start the workflow, answer its status.

    201 with ``Location`` for a new request; 200 with the existing request's status when the
    same ``Idempotency-Key`` from the same tenant was seen before with the same body; 422 when
    it was seen with a different one, or when the details do not fit the kind (a rectification
    without corrections, an objection without purpose, an opt-out from anything but marketing).
    """
    principal = require_role(request, "portal")
    keys = request.app[SECRETS]

    key = idempotency_key(request)
    body = parse_body(CreateRequestBody, await read_json(request))
    if body.tenant is not None and body.tenant != principal.tenant:
        raise Problem(403, "this token may create requests only for its own tenant", slug="forbidden-tenant",
                      title="Forbidden")
    policy = tenant_policy(request, principal.tenant)

    identities = SubjectIdentities.model_validate(body.identities.model_dump())
    fingerprint = identity_fingerprint(keys, identities)
    content = content_fingerprint(keys, {"details": body.details.model_dump(mode="json"), "verified": body.verified,
                                         "verified_by": body.verified_by})
    received_at = datetime.now(UTC)

    def build(request_id: str) -> DsrRequest:
        return build_model(
            lambda: DsrRequest(
                id=request_id,
                tenant=principal.tenant,
                kind=body.kind,
                identities=identities,
                verified_by=body.verified_by,
                identity_verified=body.verified,
                verification_timeout_days=policy.verification_timeout_days,
                approval_required=needs_approval(body.kind, body.details, policy),
                shred_after_days=request.app[SETTINGS].codec.shred_after_days,
                timeouts=StepTimeouts(
                    quick_seconds=request.app[SETTINGS].temporal.activity_timeout_seconds,
                    bulk_heartbeat_seconds=request.app[SETTINGS].temporal.heartbeat_timeout_seconds,
                ),
                received_at=received_at,
                details=body.details,
                policy=request_policy(policy),
                subject_key=subject_key(keys.server_secret, principal.tenant, identities),
            ),
            "the request cannot be built from this body",
        )

    def same_content(memo: dict[str, Any]) -> bool:
        return (
            memo.get("kind") == body.kind.value
            and same_fingerprint(memo, "fingerprint", fingerprint)
            # Requests started before the content fingerprint existed were matched on kind and identities only.
            and same_fingerprint(memo, "content", content, absent_matches=True)
        )

    return await start_once(
        request,
        REQUESTS,
        key=key,
        keyed_id=lambda k: idempotent_request_id(keys, principal.tenant, k),
        random_id=new_request_id,
        build_input=build,
        memo={
            "fingerprint": fingerprint,
            "content": content,
            "tenant": principal.tenant,
            "kind": body.kind.value,
            "received_at": received_at.isoformat(),
        },
        same_content=same_content,
        initial=lambda request_id: initial_status(request_id, principal.tenant, body.kind, received_at),
        location=lambda request_id: f"/v1/requests/{request_id}",
        search_attributes=received_attributes(principal.tenant, body.kind, received_at),
    )




async def get_request(request: web.Request) -> web.Response:
    """``GET /v1/requests/{id}``: the request's status; portal and admin see their own tenant's only (else 404)."""
    principal = require_role(request, "portal", "admin", "privacy_officer", "auditor")
    client = request.app[CLIENT]
    request_id = request.match_info["id"]
    found, status = await find_for_tenant(client, REQUESTS, request_id, principal.tenant)
    request[REQUEST_ID] = request_id
    if status is None:
        status = await current_status(client, REQUESTS, found)
    return json_response(status)
