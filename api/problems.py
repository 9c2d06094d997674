"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

Handlers raise :class:`Problem`; the :func:`problem_middleware` also turns
aiohttp's own errors (404, 405, 413, ...) and unexpected exceptions into
problem documents. An unexpected exception becomes a plain 500 whose detail
says nothing about the cause: exception messages may hold submitted values
(a pydantic ``ValidationError`` quotes its input), so they are neither
answered nor logged, only the exception's type and stack frames are.
"""

from __future__ import annotations

import asyncio
import re
import traceback
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode

PROBLEM_JSON = "application/problem+json"

# Problem type URIs name the kind of problem, not where to read about it (RFC 9457 §3.1.1 allows
# non-resolvable URIs and suggests tag: URIs for them). Plain HTTP errors use "about:blank".
TYPE_PREFIX = "tag:dsr-orchestrator,2026:problems/"
ABOUT_BLANK = "about:blank"
# An unknown body member's name is echoed in an error's location only if it looks like a field name.
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

log = structlog.get_logger()


def problem_type(slug: str) -> str:
    """The type URI of one of this API's problem kinds, e.g. ``problem_type("invalid-body")``."""
    return TYPE_PREFIX + slug


class Problem(Exception):
    """An error to answer as a problem document.

    Args:
        status: The HTTP status code (4xx or 5xx).
        detail: A human-readable explanation of this occurrence. Never put submitted values in it.
        slug: The problem kind (see :func:`problem_type`); ``None`` for a plain HTTP error (``about:blank``).
        title: A short summary of the problem kind; defaults to the status's reason phrase.
        headers: Extra response headers (``WWW-Authenticate``, ``Allow``, ``Retry-After``, ...).
        extensions: Extension members of the document (e.g. ``errors``).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = problem_type(slug) if slug else ABOUT_BLANK
        self.title = title or _phrase(status)
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})

    def to_dict(self, instance: str) -> dict[str, Any]:
        """The problem document; ``instance`` is the URI of this occurrence."""
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        for key, value in self.extensions.items():
            doc.setdefault(key, value)
        return doc


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def new_instance() -> str:
    """A fresh occurrence URI (``urn:uuid:...``) for a problem's ``instance`` member.

    Not the request path: a path can carry what the caller typed (an email instead of a
    request id), and problem documents never echo submitted values. RFC 9457 §3.1.5 allows a
    non-dereferenceable URI that only identifies the occurrence; 500s log it for correlation.
    """
    return uuid.uuid4().urn


def problem_response(request: web.Request, problem: Problem, instance: str | None = None) -> web.Response:
    """Render ``problem`` as an ``application/problem+json`` response to ``request``."""
    return web.json_response(
        problem.to_dict(instance=instance or new_instance()),
        status=problem.status,
        headers=problem.headers,
        content_type=PROBLEM_JSON,
    )


def validation_problem(exc: ValidationError, *, status: int = 422, detail: str | None = None) -> Problem:
    """A 422 problem listing where the body is invalid, without echoing any submitted value.

    Each entry of the ``errors`` member carries ``pointer`` (a JSON Pointer into the body, as in
    RFC 9457's example), ``loc`` (pydantic's location), ``type`` (pydantic's error type) and
    ``detail``. Pydantic's inputs and contexts are dropped; a message that would quote the
    submitted value is replaced by a generic one.
    """
    errors = [_safe_error(err) for err in exc.errors(include_url=False, include_context=False)]
    where = ", ".join(sorted({e["pointer"] for e in errors})) or "#"
    return Problem(
        status,
        detail or f"the request body is invalid at {where}",
        slug="invalid-body",
        title="Invalid request body",
        extensions={"errors": errors},
    )


def _safe_error(err: Mapping[str, Any]) -> dict[str, Any]:
    loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
    if err.get("type") == "extra_forbidden" and loc and not _FIELD_NAME.fullmatch(str(loc[-1])):
        loc[-1] = "*"
    msg = str(err.get("msg", "invalid value"))
    submitted = err.get("input")
    if "email" in loc and err.get("type") == "value_error":
        # email-validator's reasons quote parts of the address.
        msg = "value is not a valid email address"
    elif isinstance(submitted, str) and submitted and submitted in msg:
        msg = "invalid value"
    return {
        "pointer": "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in loc) if loc else "#",
        "loc": loc,
        "type": err.get("type", "value_error"),
        "detail": msg,
    }


def _from_http_exception(exc: web.HTTPException) -> Problem:
    headers = {}
    detail = _phrase(exc.status).lower()
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        headers["Allow"] = ", ".join(allowed)
        detail = f"this method is not allowed here; allowed: {', '.join(allowed)}"
    elif exc.status == 404:
        detail = "there is no resource at this path"
    elif exc.status == 413:
        detail = "the request body is too large"
    for name in ("WWW-Authenticate", "Retry-After"):
        if name in exc.headers:
            headers[name] = exc.headers[name]
    return Problem(exc.status, detail, headers=headers)


def _from_rpc_error(exc: RPCError) -> Problem | None:
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
        return Problem(
            503,
            "the workflow service did not answer; try again",
            slug="temporal-unavailable",
            title="Workflow service unavailable",
            headers={"Retry-After": "5"},
        )
    return None


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "-"


def log_unexpected(request: web.Request, exc: BaseException, instance: str) -> None:
    """Log an unexpected exception by type and stack frames only (its message may hold personal data)."""
    log.error(
        "api.unhandled_error",
        instance=instance,
        method=request.method,
        route=_route_template(request),
        error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        stack="".join(traceback.format_tb(exc.__traceback__)),
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error as ``application/problem+json``; a 500 reveals nothing of its cause."""
    try:
        response = await handler(request)
    except Problem as problem:
        return problem_response(request, problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(request, _from_http_exception(exc))
    except asyncio.CancelledError:
        raise
    except RPCError as exc:
        problem = _from_rpc_error(exc)
        if problem is not None:
            return problem_response(request, problem)
        instance = new_instance()
        log_unexpected(request, exc, instance)
        return problem_response(request, _internal_error(), instance)
    except Exception as exc:
        instance = new_instance()
        log_unexpected(request, exc, instance)
        return problem_response(request, _internal_error(), instance)
    if (
        isinstance(response, web.Response)
        and response.status >= 400
        and response.content_type != PROBLEM_JSON
        and not response.prepared
    ):
        # An error answered by a handler rather than raised: replace its body, keep the status.
        return problem_response(request, Problem(response.status, _phrase(response.status).lower()))
    return response


def _internal_error() -> Problem:
    return Problem(500, "an unexpected error occurred; it has been logged", title="Internal Server Error")

