"""What every handler shares: application state, reading bodies, and finding a tenant's workflow in Temporal.

A request or a dispute is one workflow; :class:`Resource` says how to recognise each kind
(id pattern, workflow type) and how to read its status, so that lookups, tenant checks and
status reads are written once.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.ids import RequestSecrets
from api.problems import Problem, validation_problem
from workers.config import Settings
from workers.keys import KeyShreddedError

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,200}$")
MAX_BODY_BYTES = 64 * 1024

QUERY_TIMEOUT = timedelta(seconds=10)
UPDATE_TIMEOUT = timedelta(seconds=20)
RETRY_AFTER_SECONDS = "5"

SETTINGS = web.AppKey("settings", Settings)
CLIENT = web.AppKey("client", Client)
SECRETS = web.AppKey("secrets", RequestSecrets)
REQUEST_ID = web.RequestKey("dsr_request_id", str)
"""The opaque id of the request (or dispute) a call concerned, for the access log."""

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound=BaseModel)


# --- bodies and answers ----------------------------------------------------------------


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


def parse_body(model: type[M], data: Any) -> M:
    """Validate ``data`` against ``model``; a 422 problem (without submitted values) when invalid."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def build_model(build: Callable[[], M], what: str) -> M:
    """Build a workflow input from a valid body; a 422 problem when the combination is still invalid.

    The messages of whole-model rules (e.g. "a rectification needs details.corrections") are ours and
    carry no submitted value, so they are named in the detail.
    """
    try:
        return build()
    except ValidationError as exc:
        rules = [
            str(err.get("msg", "")).removeprefix("Value error, ")
            for err in exc.errors(include_url=False, include_context=False)
            if not err.get("loc") and err.get("type") == "value_error"
        ]
        detail = f"{what}: {'; '.join(rules)}" if rules else what
        raise validation_problem(exc, detail=detail) from None


def json_response(model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``model`` as a JSON response."""
    return web.json_response(model.model_dump(mode="json"), status=status, headers=headers)


def unavailable(detail: str) -> Problem:
    """A 503 problem asking the caller to retry."""
    return Problem(503, detail, slug="status-unavailable", headers={"Retry-After": RETRY_AFTER_SECONDS})


def idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header, if sent.

    Raises:
        Problem: 400 when it is repeated, empty, too long or not printable ASCII.
    """
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


def idempotency_conflict() -> Problem:
    """The key was used before and its workflow cannot be read back."""
    return Problem(409, f"the {IDEMPOTENCY_HEADER} was used before and its workflow cannot be read",
                   slug="idempotency-key-conflict", title="Conflict")


def idempotency_reused() -> Problem:
    """The key was used before with other content."""
    return Problem(422, f"{IDEMPOTENCY_HEADER} reused with a different request",
                   slug="idempotency-key-reused", title="Idempotency-Key reused")


# --- workflows as resources --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resource(Generic[S]):
    """One kind of workflow the API exposes (a request, a dispute).

    Attributes:
        noun: How problems name it ("request").
        workflow_type: Its workflow type; a workflow of another type under the same id is not it.
        id_pattern: Its ids; anything else is 404 without asking Temporal.
        status_type: The model of its ``status`` query and result (has ``tenant``).
        initial: Its status from the memo written at start, for a workflow no worker has run yet
            (None when the memo does not have what it needs).
    """

    noun: str
    workflow_type: str
    id_pattern: re.Pattern[str]
    status_type: type[S]
    initial: Callable[[str, dict[str, Any]], S | None]

    def not_found(self) -> Problem:
        """The same 404 for a missing, malformed or another tenant's id."""
        return Problem(404, f"no such {self.noun}", slug=f"{self.noun}-not-found",
                       title=f"{self.noun.title()} not found")


@dataclass(slots=True)
class Found:
    """A workflow as described by Temporal."""

    handle: WorkflowHandle[Any, Any]
    description: WorkflowExecutionDescription
    memo: dict[str, Any]


async def describe(client: Client, resource: Resource[Any], workflow_id: str) -> Found | None:
    """The workflow ``workflow_id`` if it exists and is a ``resource``; its memo decoded (empty if unreadable)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if description.workflow_type != resource.workflow_type:
        return None
    try:
        memo = dict(await description.memo())
    except Exception:  # an unreadable memo (e.g. sealed with a retired key) is treated as absent
        memo = {}
    return Found(handle=handle, description=description, memo=memo)


async def current_status(client: Client, resource: Resource[S], found: Found) -> S:
    """The workflow's status: its result once completed, else its ``status`` query.

    A workflow no worker has picked up yet cannot answer a query; its status is then the
    initial one, rebuilt from the memo written at start.

    Raises:
        Problem: 503 when the workflow cannot answer now (no worker polling).
    """
    desc = found.description
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        handle = client.get_workflow_handle(desc.id, run_id=desc.run_id, result_type=resource.status_type)
        try:
            return await handle.result(follow_runs=False, rpc_timeout=QUERY_TIMEOUT)
        except KeyShreddedError:
            return await shredded_summary(client, resource, desc.id)
    # Events 1-2 are "started" and "workflow task scheduled": no code of the workflow has run yet.
    if desc.status == WorkflowExecutionStatus.RUNNING and desc.history_length <= 2:
        initial = resource.initial(desc.id, found.memo)
        if initial is not None:
            return initial
    try:
        return await found.handle.query("status", result_type=resource.status_type, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):
        raise unavailable(f"the {resource.noun}'s status cannot be read right now; try again") from None


async def shredded_summary(client: Client, resource: Resource[S], workflow_id: str) -> S:
    """The non-personal summary of a crypto-shredded request, kept by its shredding workflow.

    Raises:
        Problem: 410 when not even the summary can be read (the shredding workflow's history is gone).
    """
    from workflows.shredding import shredding_workflow_id

    handle = client.get_workflow_handle(shredding_workflow_id(workflow_id), result_type=resource.status_type)
    try:
        return await handle.result(follow_runs=False, rpc_timeout=QUERY_TIMEOUT)
    except Exception:
        raise Problem(410, f"the {resource.noun} was shredded and its summary is no longer kept",
                      slug=f"{resource.noun}-shredded", title="Gone") from None


async def find_for_tenant(
    client: Client, resource: Resource[S], workflow_id: str, tenant: str | None
) -> tuple[Found, S | None]:
    """The workflow ``workflow_id`` if it belongs to ``tenant``; 404 otherwise (also for malformed ids).

    ``tenant`` None (a privacy officer or auditor of every tenant) accepts any tenant's workflow.
    Returns the status too when it had to be queried to learn the tenant.
    """
    if not resource.id_pattern.fullmatch(workflow_id):
        raise resource.not_found()
    found = await describe(client, resource, workflow_id)
    if found is None:
        raise resource.not_found()
    if tenant is None:
        return found, None
    owner = found.memo.get("tenant")
    status: S | None = None
    if not isinstance(owner, str):
        # Started without our memo (e.g. from the CLI): the workflow knows its tenant.
        status = await current_status(client, resource, found)
        owner = str(getattr(status, "tenant", ""))
    if not hmac.compare_digest(owner.encode(), tenant.encode()):
        raise resource.not_found()  # another tenant's: do not reveal that it exists
    return found, status


def same_fingerprint(memo: dict[str, Any], key: str, expected: str, *, absent_matches: bool = False) -> bool:
    """Whether the memo's ``key`` holds the fingerprint ``expected`` (compared in constant time).

    ``absent_matches`` accepts a memo without ``key`` (written before that fingerprint existed).
    """
    if key not in memo:
        return absent_matches
    return hmac.compare_digest(str(memo[key]), expected)
