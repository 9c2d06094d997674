"""Request handlers: create a request, read its status, decide on its approval; health probes.

The API talks to workflows only through the Temporal client:

- ``POST /v1/requests`` starts ``DataSubjectRequestWorkflow`` with the request's opaque id as workflow id.
- ``GET /v1/requests/{id}`` answers the workflow's ``status`` query.
- ``POST /v1/requests/{id}/decision`` sends the ``decide`` update.

Nothing a subject submitted is ever logged or echoed in an error: identities
reach Temporal only inside the encrypted workflow input. To recognise a
replayed ``Idempotency-Key``, the workflow memo (encrypted too) carries an
HMAC fingerprint of the identities, never the identities themselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import require_role
from api.problems import Problem, validation_problem
from workers.config import Settings
from workflows.models import (
    SUPPORTED_KINDS,
    Decision,
    DsrRequest,
    RecordedDecision,
    RequestKind,
    RequestStatus,
    Step,
    SubjectIdentities,
    end_of_day,
    one_calendar_month_after,
)

WORKFLOW_TYPE = "DataSubjectRequestWorkflow"
ID_PREFIX = "req_"
ID_BODY_CHARS = 26
ID_PATTERN = re.compile(rf"^{ID_PREFIX}[a-z2-7]{{{ID_BODY_CHARS}}}$")
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,200}$")
MAX_BODY_BYTES = 64 * 1024

QUERY_TIMEOUT = timedelta(seconds=10)
UPDATE_TIMEOUT = timedelta(seconds=20)
RETRY_AFTER_SECONDS = "5"


# --- application state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSecrets:
    """Keys derived from the server secret (the current codec key), one per purpose.

    Deriving separate keys keeps the codec key itself out of every HMAC here.
    """

    request_id: bytes
    fingerprint: bytes
    update_id: bytes

    @classmethod
    def derive(cls, server_secret: bytes) -> RequestSecrets:
        """Derive the purpose keys from ``server_secret``."""

        def sub(label: str) -> bytes:
            return hmac.new(server_secret, f"dsr-api/{label}/v1".encode(), hashlib.sha256).digest()

        return cls(request_id=sub("request-id"), fingerprint=sub("identity-fingerprint"), update_id=sub("update-id"))


SETTINGS = web.AppKey("settings", Settings)
CLIENT = web.AppKey("client", Client)
SECRETS = web.AppKey("secrets", RequestSecrets)
REQUEST_ID = web.RequestKey("dsr_request_id", str)
"""The opaque id of the data subject request a call concerned, for the access log."""


# --- ids and fingerprints --------------------------------------------------------------


def _b32(digest: bytes) -> str:
    return base64.b32encode(digest).decode("ascii").lower()[:ID_BODY_CHARS]


def new_request_id() -> str:
    """A fresh random request id: ``req_`` and 26 base32 characters (130 bits)."""
    return ID_PREFIX + _b32(secrets.token_bytes(20))


def idempotent_request_id(keys: RequestSecrets, tenant: str, idempotency_key: str) -> str:
    """The request id for ``idempotency_key`` sent by ``tenant``: the same pair always gives the same id.

    It is an HMAC under the server secret, so it reveals nothing of the key and cannot be
    guessed for another tenant's key.
    """
    mac = hmac.new(keys.request_id, tenant.encode() + b"\0" + idempotency_key.encode(), hashlib.sha256)
    return ID_PREFIX + _b32(mac.digest())


def identity_fingerprint(keys: RequestSecrets, identities: SubjectIdentities) -> str:
    """An HMAC of the canonical identities: equal for equal identities, and no way back to them."""
    canonical = json.dumps(identities.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(keys.fingerprint, canonical.encode(), hashlib.sha256).hexdigest()


def decision_update_id(keys: RequestSecrets, request_id: str, decision: Decision) -> str:
    """A stable update id for ``decision``: resending the same decision is answered, not refused."""
    parts = [request_id, decision.actor, decision.outcome, decision.reason, decision.tenant or ""]
    mac = hmac.new(keys.update_id, "\0".join(parts).encode(), hashlib.sha256)
    return "decide-" + mac.hexdigest()[:32]


def initial_status(request_id: str, tenant: str, kind: RequestKind, received_at: datetime) -> RequestStatus:
    """The status a request has before its workflow ran its first task (as the workflow's ``__init__`` sets it)."""
    return RequestStatus(
        id=request_id,
        tenant=tenant,
        kind=kind,
        step=Step.RECEIVED,
        received_at=received_at,
        due_at=end_of_day(one_calendar_month_after(received_at)),
    )


# --- bodies ----------------------------------------------------------------------------


class IdentitiesBody(SubjectIdentities):
    """The subject's identities as submitted; unknown identity types are refused."""

    model_config = ConfigDict(extra="forbid")


class CreateRequestBody(BaseModel):
    """Body of ``POST /v1/requests``. The tenant is the portal token's."""

    model_config = ConfigDict(extra="forbid")

    kind: RequestKind
    identities: IdentitiesBody
    verified_by: str | None = Field(default=None, min_length=1, max_length=200)
    tenant: str | None = Field(default=None, description="Optional; must be the token's tenant.")


class DecisionBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/decision``. The actor and tenant are the admin token's."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=2000)


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON.

    Raises:
        Problem: 415 for a non-JSON content type, 400 for an empty or unparsable body.
    """
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise Problem(415, "the request body must be application/json", slug="unsupported-media-type")
    raw = await request.read()
    if not raw.strip():
        raise Problem(400, "the request body is empty; a JSON object is expected", slug="malformed-json")
    try:
        return json.loads(raw)
    except ValueError:
        raise Problem(400, "the request body is not valid JSON", slug="malformed-json") from None


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], data: Any) -> M:
    """Validate ``data`` against ``model``; a 422 problem (without submitted values) when invalid."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def _json(model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status, headers=headers)


def _not_found() -> Problem:
    return Problem(404, "no such request", slug="request-not-found", title="Request not found")


def _unavailable(detail: str) -> Problem:
    return Problem(503, detail, slug="status-unavailable", headers={"Retry-After": RETRY_AFTER_SECONDS})


def _idempotency_key(request: web.Request) -> str | None:
    values = request.headers.getall(IDEMPOTENCY_HEADER, [])
    if not values:
        return None
    if len(values) > 1 or not IDEMPOTENCY_KEY_PATTERN.fullmatch(values[0]):
        raise Problem(
            400,
            f"the {IDEMPOTENCY_HEADER} header must be one value of 1 to 200 printable ASCII characters",
            slug="invalid-idempotency-key",
        )
    return values[0]


# --- reading a request back from Temporal ----------------------------------------------


@dataclass(slots=True)
class Found:
    """A request's workflow as described by Temporal."""

    handle: WorkflowHandle[Any, Any]
    description: WorkflowExecutionDescription
    memo: dict[str, Any]


async def _describe(client: Client, request_id: str) -> Found | None:
    handle = client.get_workflow_handle(request_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if description.workflow_type != WORKFLOW_TYPE:
        return None
    try:
        memo = dict(await description.memo())
    except Exception:  # an unreadable memo (e.g. sealed with a retired key) is treated as absent
        memo = {}
    return Found(handle=handle, description=description, memo=memo)


async def current_status(client: Client, found: Found) -> RequestStatus:
    """The request's status: the workflow's result once completed, else its ``status`` query.

    A workflow no worker has picked up yet cannot answer a query; its status is then the
    initial one, rebuilt from the memo written at start.

    Raises:
        Problem: 503 when the workflow cannot answer now (no worker polling).
    """
    desc = found.description
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        handle = client.get_workflow_handle(desc.id, run_id=desc.run_id, result_type=RequestStatus)
        return await handle.result(follow_runs=False, rpc_timeout=QUERY_TIMEOUT)
    memo = found.memo
    # Events 1-2 are "started" and "workflow task scheduled": no code of the workflow has run yet.
    if desc.status == WorkflowExecutionStatus.RUNNING and desc.history_length <= 2 and _memo_complete(memo):
        received_at = datetime.fromisoformat(memo["received_at"])
        return initial_status(desc.id, memo["tenant"], RequestKind(memo["kind"]), received_at)
    try:
        return await found.handle.query("status", result_type=RequestStatus, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):
        raise _unavailable("the request's status cannot be read right now; try again") from None


def _memo_complete(memo: dict[str, Any]) -> bool:
    return all(isinstance(memo.get(k), str) for k in ("tenant", "kind", "received_at"))


async def _find_for_tenant(client: Client, request_id: str, tenant: str) -> tuple[Found, RequestStatus | None]:
    """The request ``request_id`` if it belongs to ``tenant``; 404 otherwise (also for malformed ids).

    Returns the status too when it had to be queried to learn the tenant.
    """
    if not ID_PATTERN.fullmatch(request_id):
        raise _not_found()
    found = await _describe(client, request_id)
    if found is None:
        raise _not_found()
    owner = found.memo.get("tenant")
    status: RequestStatus | None = None
    if not isinstance(owner, str):
        # Started without our memo (e.g. from the CLI): the workflow knows its tenant.
        status = await current_status(client, found)
        owner = status.tenant
    if not hmac.compare_digest(owner.encode(), tenant.encode()):
        raise _not_found()  # another tenant's request: do not reveal that it exists
    return found, status


# --- handlers --------------------------------------------------------------------------


async def create_request(request: web.Request) -> web.Response:
    """``POST /v1/requests``: validate, start the workflow, answer its status.

    201 with ``Location`` for a new request; 200 with the existing request's status when the
    same ``Idempotency-Key`` from the same tenant was seen before with the same kind and
    identities; 422 when it was seen with a different request.
    """
    principal = require_role(request, "portal")
    settings = request.app[SETTINGS]
    client = request.app[CLIENT]
    keys = request.app[SECRETS]

    idempotency_key = _idempotency_key(request)
    body = parse_body(CreateRequestBody, await read_json(request))
    if body.tenant is not None and body.tenant != principal.tenant:
        raise Problem(403, "this token may create requests only for its own tenant", slug="forbidden-tenant",
                      title="Forbidden")
    tenant_policy = settings.tenant(principal.tenant)
    if tenant_policy is None:
        raise Problem(422, "the token's tenant is not configured", slug="unknown-tenant", title="Unknown tenant")
    if body.kind not in SUPPORTED_KINDS:
        supported = ", ".join(sorted(k.value for k in SUPPORTED_KINDS))
        raise Problem(
            422,
            f"the request kind '{body.kind.value}' is not supported yet; supported kinds: {supported}",
            slug="unsupported-kind",
            title="Request kind not supported",
        )

    identities = SubjectIdentities.model_validate(body.identities.model_dump())
    fingerprint = identity_fingerprint(keys, identities)
    received_at = datetime.now(UTC)
    request_id = (
        idempotent_request_id(keys, principal.tenant, idempotency_key) if idempotency_key else new_request_id()
    )
    for _attempt in range(3):
        try:
            dsr = DsrRequest(
                id=request_id,
                tenant=principal.tenant,
                kind=body.kind,
                identities=identities,
                verified_by=body.verified_by,
                approval_required=body.kind in tenant_policy.approval_required,
                received_at=received_at,
            )
        except ValidationError as exc:
            raise validation_problem(exc, detail="the request cannot be built from this body") from None
        request[REQUEST_ID] = request_id
        try:
            await client.start_workflow(
                WORKFLOW_TYPE,
                dsr,
                id=request_id,
                task_queue=settings.temporal.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                memo={
                    "fingerprint": fingerprint,
                    "tenant": principal.tenant,
                    "kind": body.kind.value,
                    "received_at": received_at.isoformat(),
                },
            )
        except WorkflowAlreadyStartedError:
            if idempotency_key:
                return await _replay(request, request_id, body.kind, fingerprint)
            request_id = new_request_id()  # a random id collided: vanishingly rare, draw again
            continue
        status = initial_status(request_id, principal.tenant, body.kind, received_at)
        return _json(status, status=201, headers={"Location": f"/v1/requests/{request_id}"})
    raise RuntimeError("could not draw an unused request id")


async def _replay(request: web.Request, request_id: str, kind: RequestKind, fingerprint: str) -> web.Response:
    client = request.app[CLIENT]
    found = await _describe(client, request_id)
    if found is None:
        # Started moments ago and already gone (retention) or not a request workflow: do not guess.
        raise Problem(409, f"the {IDEMPOTENCY_HEADER} was used before and its request cannot be read",
                      slug="idempotency-key-conflict", title="Conflict")
    same_kind = found.memo.get("kind") == kind.value
    same_subject = hmac.compare_digest(str(found.memo.get("fingerprint", "")), fingerprint)
    if not (same_kind and same_subject):
        raise Problem(422, f"{IDEMPOTENCY_HEADER} reused with a different request",
                      slug="idempotency-key-reused", title="Idempotency-Key reused")
    status = await current_status(client, found)
    return _json(status, status=200, headers={"Location": f"/v1/requests/{request_id}"})


async def get_request(request: web.Request) -> web.Response:
    """``GET /v1/requests/{id}``: the request's status, for its own tenant's tokens only (else 404)."""
    principal = require_role(request, "portal", "admin")
    client = request.app[CLIENT]
    request_id = request.match_info["id"]
    found, status = await _find_for_tenant(client, request_id, principal.tenant)
    request[REQUEST_ID] = request_id
    if status is None:
        status = await current_status(client, found)
    return _json(status)


async def decide_request(request: web.Request) -> web.Response:
    """``POST /v1/requests/{id}/decision``: an admin of the request's tenant approves or rejects it.

    200 with the recorded decision; 409 when the workflow refuses it (already decided, not
    awaiting approval, finished). Resending the very same decision answers the recorded one.
    """
    principal = require_role(request, "admin")
    client = request.app[CLIENT]
    keys = request.app[SECRETS]
    request_id = request.match_info["id"]
    if not ID_PATTERN.fullmatch(request_id):
        raise _not_found()
    body = parse_body(DecisionBody, await read_json(request))
    if body.outcome == "reject" and not body.reason.strip():
        raise Problem(
            422,
            "a rejection needs a reason (GDPR Art. 12(4))",
            slug="invalid-body",
            title="Invalid request body",
            extensions={"errors": [{"pointer": "#/reason", "loc": ["reason"], "type": "missing",
                                    "detail": "a rejection needs a reason"}]},
        )
    try:
        decision = Decision(actor=principal.name, outcome=body.outcome, reason=body.reason, tenant=principal.tenant)
    except ValidationError as exc:  # e.g. a configured token name too long to be an actor
        raise validation_problem(exc, detail="the decision cannot be recorded as given") from None

    found, _ = await _find_for_tenant(client, request_id, principal.tenant)
    request[REQUEST_ID] = request_id
    update_id = decision_update_id(keys, request_id, decision)
    try:
        recorded = await found.handle.execute_update(
            "decide", decision, id=update_id, result_type=RecordedDecision, rpc_timeout=UPDATE_TIMEOUT
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        reason = cause.message if isinstance(cause, ApplicationError) else "the workflow refused the decision"
        raise Problem(409, reason, slug="decision-refused", title="Decision refused") from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise _unavailable("the request did not take the decision in time; send the same decision again") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # the workflow finished (or is gone) meanwhile
            raise Problem(409, "the request is finished; it takes no decision", slug="decision-refused",
                          title="Decision refused") from None
        raise
    return _json(recorded)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: Temporal answers its health check (503 problem otherwise)."""
    client = request.app[CLIENT]
    try:
        serving = await client.service_client.check_health(timeout=timedelta(seconds=2))
    except Exception:
        serving = False
    if not serving:
        raise Problem(503, "the workflow service is not reachable", slug="not-ready", title="Not ready",
                      headers={"Retry-After": RETRY_AFTER_SECONDS})
    return web.json_response({"status": "ready"})


def setup_routes(app: web.Application) -> None:
    """Register the API's routes on ``app``."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/v1/requests", create_request)
    app.router.add_get("/v1/requests/{id}", get_request)
    app.router.add_post("/v1/requests/{id}/decision", decide_request)
