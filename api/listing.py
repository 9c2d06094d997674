"""``GET /v1/requests``: list requests through Temporal visibility, by the search attributes of workflows/search.py.

Filters (query parameters, all optional): ``tenant``, ``kind``, ``status`` (the request's step, e.g.
``awaiting_approval``), ``due_before`` and ``due_after`` (ISO 8601; a date means midnight UTC, a time
without offset is UTC); ``page_size`` (1-200, default 50) and ``page_token`` (the ``next_page_token`` of
the previous page, with the same filters). A portal or admin token lists its own tenant only: a
``tenant`` filter naming another one is refused (403).

The visibility query is built from validated values only (a tenant name's characters, an enum, a
formatted datetime), so nothing a caller typed reaches it verbatim. Temporal's page token is handed out
sealed with an HMAC over the query it belongs to: a token altered, or replayed with other filters, is a
400, never a question to Temporal. Visibility is eventually consistent: a request created a moment ago
may be missing from a listing for a second.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, date, datetime, time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temporalio.client import WorkflowExecution
from temporalio.service import RPCError, RPCStatusCode

from api.auth import require_role
from api.common import CLIENT, SECRETS, parse_body
from api.problems import Problem
from api.requests_routes import WORKFLOW_TYPE
from workflows.models import RequestKind, Step
from workflows.search import DSR_DUE_AT, DSR_KIND, DSR_STEP, DSR_TENANT

TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
MAX_PAGE_SIZE = 200
_MAC_BYTES = 16


class ListQuery(BaseModel):
    """The query parameters of ``GET /v1/requests``."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN, description="Only this tenant's requests.")
    kind: RequestKind | None = Field(default=None, description="Only requests of this kind.")
    status: Step | None = Field(default=None, description="Only requests at this step.")
    due_before: datetime | None = Field(default=None, description="Only requests due before this instant.")
    due_after: datetime | None = Field(default=None, description="Only requests due after this instant.")
    page_size: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE)
    page_token: str | None = Field(default=None, min_length=1, max_length=8192, pattern=r"^[A-Za-z0-9_-]+$")

    @field_validator("due_before", "due_after", mode="before")
    @classmethod
    def _date_or_datetime(cls, v: Any) -> Any:
        if isinstance(v, str) and len(v) == 10:
            try:
                return datetime.combine(date.fromisoformat(v), time(0), tzinfo=UTC)
            except ValueError:
                return v
        return v

    @field_validator("due_before", "due_after")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class RequestSummary(BaseModel):
    """One listed request, from its search attributes (no personal data)."""

    id: str
    tenant: str
    kind: RequestKind
    step: Step | None = Field(description="None for a request started without search attributes.")
    due_at: datetime | None
    received_at: datetime


class RequestList(BaseModel):
    """The answer of ``GET /v1/requests``."""

    requests: list[RequestSummary]
    next_page_token: str | None = Field(description="Pass as page_token, with the same filters, for the next page.")


def visibility_query(tenant: str | None, q: ListQuery) -> str:
    """The visibility query for ``q`` restricted to ``tenant`` (None: every tenant). Values are validated."""
    parts = [f"WorkflowType = '{WORKFLOW_TYPE}'"]
    if tenant is not None:
        parts.append(f"{DSR_TENANT.name} = '{tenant}'")
    if q.kind is not None:
        parts.append(f"{DSR_KIND.name} = '{q.kind.value}'")
    if q.status is not None:
        parts.append(f"{DSR_STEP.name} = '{q.status.value}'")
    if q.due_before is not None:
        parts.append(f"{DSR_DUE_AT.name} < '{_rfc3339(q.due_before)}'")
    if q.due_after is not None:
        parts.append(f"{DSR_DUE_AT.name} > '{_rfc3339(q.due_after)}'")
    return " AND ".join(parts)


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _mac(secret: bytes, query: str, raw: bytes) -> bytes:
    return hmac.new(secret, b"dsr-page-token\0" + query.encode() + b"\0" + raw, hashlib.sha256).digest()[:_MAC_BYTES]


def seal_page_token(secret: bytes, query: str, raw: bytes | None) -> str | None:
    """Temporal's page token, sealed to ``query`` (base64url, no padding)."""
    if not raw:
        return None
    return base64.urlsafe_b64encode(_mac(secret, query, raw) + raw).rstrip(b"=").decode()


def open_page_token(secret: bytes, query: str, token: str | None) -> bytes | None:
    """Temporal's page token inside ``token``.

    Raises:
        Problem: 400 when the token is not one we issued for this very query.
    """
    if token is None:
        return None
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error):
        sealed = b""
    mac, raw = sealed[:_MAC_BYTES], sealed[_MAC_BYTES:]
    if not raw or not hmac.compare_digest(mac, _mac(secret, query, raw)):
        raise _bad_token()
    return raw


def _bad_token() -> Problem:
    return Problem(400, "page_token is not a token of this listing (pass next_page_token with the same filters)",
                   slug="invalid-page-token", title="Invalid page token")


def _query_params(request: web.Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for name in request.query:
        values = request.query.getall(name)
        if len(values) > 1:
            raise Problem(400, "each query parameter may be given once", slug="repeated-parameter")
        params[name] = values[0]
    return params


async def _summary(execution: WorkflowExecution) -> RequestSummary | None:
    attrs = execution.typed_search_attributes
    tenant, kind = attrs.get(DSR_TENANT), attrs.get(DSR_KIND)
    memo: dict[str, Any] = {}
    if tenant is None or kind is None:  # started without search attributes: the memo may know
        try:
            memo = dict(await execution.memo())
        except Exception:
            memo = {}
        tenant = tenant or memo.get("tenant")
        kind = kind or memo.get("kind")
    if not isinstance(tenant, str) or kind not in RequestKind.__members__.values():
        return None
    step = attrs.get(DSR_STEP)
    return RequestSummary(
        id=execution.id,
        tenant=tenant,
        kind=RequestKind(kind),
        step=Step(step) if step in Step.__members__.values() else None,
        due_at=attrs.get(DSR_DUE_AT),
        received_at=_received_at(memo, execution),
    )


def _received_at(memo: dict[str, Any], execution: WorkflowExecution) -> datetime:
    value = memo.get("received_at")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return execution.start_time


async def list_requests(request: web.Request) -> web.Response:
    """``GET /v1/requests``: one page of requests matching the filters (see the module docstring)."""
    principal = require_role(request, "portal", "admin", "privacy_officer", "auditor")
    q = parse_body(ListQuery, _query_params(request))
    tenant = q.tenant
    if principal.tenant is not None:
        if tenant is not None and tenant != principal.tenant:
            raise Problem(403, "this token lists only its own tenant's requests", slug="forbidden-tenant",
                          title="Forbidden")
        tenant = principal.tenant
    query = visibility_query(tenant, q)
    secret = request.app[SECRETS].server_secret
    raw_token = open_page_token(secret, query, q.page_token)
    iterator = request.app[CLIENT].list_workflows(query, page_size=q.page_size, next_page_token=raw_token)
    try:
        await iterator.fetch_next_page()
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise _bad_token() from None
        raise
    summaries = [await _summary(execution) for execution in iterator.current_page or []]
    answer = RequestList(
        requests=[s for s in summaries if s is not None],
        next_page_token=seal_page_token(secret, query, iterator.next_page_token),
    )
    return web.json_response(answer.model_dump(mode="json"))
