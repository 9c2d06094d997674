"""Disputes (privacy policy 6.1.4, GDPR Art. 18(1)): open one, read its status, resolve it.

- ``POST /v1/disputes`` starts ``DisputeWorkflow`` with a ``dsp_`` id (``Idempotency-Key`` as for requests).
- ``GET /v1/disputes/{id}`` answers the workflow's ``status`` query.
- ``POST /v1/disputes/{id}/resolution`` sends the ``resolve`` update.

When the subject prevails, the dispute goes on as the request they asked for, whose id
(``follow_up_request_id`` in the status) ``GET /v1/requests/{id}`` accepts.

Opening and resolving are for the administrators of the dispute's tenant; reading is for them, privacy
officers and auditors. As for requests, the identities and
grounds travel only inside the encrypted workflow input; the memo holds HMAC fingerprints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import Principal, require_role
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
    DISPUTE_ID_PATTERN,
    content_fingerprint,
    idempotent_dispute_id,
    identity_fingerprint,
    initial_dispute_status,
    new_dispute_id,
    subject_key,
)
from api.requests_routes import IdentitiesBody, check_details_fit, tenant_policy
from api.starting import start_once
from api.updates import UpdateRoute
from workflows.messages import DISPUTE_WORKFLOW, DisputeInput, DisputeResolution, DisputeStatus
from workflows.models import RequestDetails, RequestKind, SubjectIdentities
from workflows.search import dispute_attributes


def _initial_from_memo(dispute_id: str, memo: dict[str, Any]) -> DisputeStatus | None:
    if not all(isinstance(memo.get(k), str) for k in ("tenant", "opened_at")):
        return None
    return initial_dispute_status(dispute_id, memo["tenant"], datetime.fromisoformat(memo["opened_at"]))


DISPUTES = Resource(
    noun="dispute",
    workflow_type=DISPUTE_WORKFLOW,
    id_pattern=DISPUTE_ID_PATTERN,
    status_type=DisputeStatus,
    initial=_initial_from_memo,
)


class OpenDisputeBody(BaseModel):
    """Body of ``POST /v1/disputes``. The tenant and the opener are the admin token's."""

    model_config = ConfigDict(extra="forbid")

    identities: IdentitiesBody
    grounds: str = Field(min_length=1, max_length=2000, description="What is disputed (stays encrypted).")
    requested_kind: RequestKind = Field(
        default=RequestKind.ERASURE, description="What the subject asked for; it proceeds if they prevail."
    )
    details: RequestDetails = Field(
        default_factory=RequestDetails,
        description="What that request needs, as for POST /v1/requests (a rectification's corrections, "
                    "an objection's purpose).",
    )

    @field_validator("grounds")
    @classmethod
    def _grounds(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("grounds must not be blank")
        return v


class ResolutionBody(BaseModel):
    """Body of ``POST /v1/disputes/{id}/resolution``."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["subject_prevails", "company_prevails"]
    reason: str = Field(min_length=1, max_length=2000)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a resolution needs a reason")
        return v


async def open_dispute(request: web.Request) -> web.Response:
    """``POST /v1/disputes``: start the dispute's workflow, which restricts the subject's processing.

    201 with ``Location`` and the initial status; 200 with the current status when the same
    ``Idempotency-Key`` from the same tenant was seen before with the same body; 422 when it was
    seen with a different one.
    """
    principal = require_role(request, "admin")
    keys = request.app[SECRETS]
    key = idempotency_key(request)
    body = parse_body(OpenDisputeBody, await read_json(request))
    policy = tenant_policy(request, principal.tenant)
    # Refused now rather than when the subject prevails and the request they asked for cannot be started.
    check_details_fit(body.requested_kind, body.details)

    identities = SubjectIdentities.model_validate(body.identities.model_dump())
    fingerprint = identity_fingerprint(keys, identities)
    content = content_fingerprint(keys, {"grounds": body.grounds, "requested_kind": body.requested_kind.value,
                                         "details": body.details.model_dump(mode="json")})
    opened_at = datetime.now(UTC)

    def build(dispute_id: str) -> DisputeInput:
        return build_model(
            lambda: DisputeInput(
                id=dispute_id,
                tenant=principal.tenant,
                identities=identities,
                subject_key=subject_key(keys.server_secret, principal.tenant, identities),
                opened_by=principal.name,
                grounds=body.grounds,
                requested_kind=body.requested_kind,
                notice_days=policy.dispute_notice_days,
                opened_at=opened_at,
                details=body.details,
                shred_after_days=request.app[SETTINGS].codec.shred_after_days,
            ),
            "the dispute cannot be built from this body",
        )

    def same_content(memo: dict[str, Any]) -> bool:
        return same_fingerprint(memo, "fingerprint", fingerprint) and same_fingerprint(memo, "content", content)

    return await start_once(
        request,
        DISPUTES,
        key=key,
        keyed_id=lambda k: idempotent_dispute_id(keys, principal.tenant, k),
        random_id=new_dispute_id,
        build_input=build,
        memo={
            "fingerprint": fingerprint,
            "content": content,
            "tenant": principal.tenant,
            "opened_at": opened_at.isoformat(),
        },
        same_content=same_content,
        initial=lambda dispute_id: initial_dispute_status(dispute_id, principal.tenant, opened_at),
        location=lambda dispute_id: f"/v1/disputes/{dispute_id}",
        search_attributes=dispute_attributes(principal.tenant),
    )


async def get_dispute(request: web.Request) -> web.Response:
    """``GET /v1/disputes/{id}``: the dispute's status; an admin sees their own tenant's only (else 404)."""
    principal = require_role(request, "admin", "privacy_officer", "auditor")
    client = request.app[CLIENT]
    dispute_id = request.match_info["id"]
    found, status = await find_for_tenant(client, DISPUTES, dispute_id, principal.tenant)
    request[REQUEST_ID] = dispute_id
    if status is None:
        status = await current_status(client, DISPUTES, found)
    return json_response(status)


def _resolution(body: ResolutionBody, who: Principal) -> DisputeResolution:
    return DisputeResolution(actor=who.name, outcome=body.outcome, reason=body.reason, tenant=who.tenant)


RESOLUTION = UpdateRoute(DISPUTES, "resolve", "resolution", ("admin",), ResolutionBody, _resolution, DisputeStatus)
"""``POST /v1/disputes/{id}/resolution``: answers the dispute's status as the resolution left it."""
