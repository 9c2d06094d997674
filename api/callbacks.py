"""Partner callbacks (OpenDSR, signed webhook) and a person's confirmation of a manual task.

``POST /v1/callbacks/opendsr/{request_id}/{system}``: a partner's OpenDSR status callback.

No bearer token: the callback is authorised by its own signature. Before anything is parsed, the raw body's
``X-OpenDSR-Signature`` (or legacy ``X-OpenGDPR-Signature``) is verified with the certificate of the system's
partner, whose domain must be on the system's allow-list
(:func:`connectors.partners.opendsr_callbacks.verify_callback`).
Then the body must name this very URL as its ``status_callback_url`` (a genuine callback of another request
replayed here is refused) and carry a UUID ``subject_request_id``; the status is signalled to the system's
``PartnerWaitWorkflow``.

Answers: 200 when signalled, and 200 too when the wait is already over (callbacks repeat; a late or replayed
one changes nothing); 403 for a callback that is not authentic or not ours; 400 for a signed body that is not
a status; 404 for an unknown system or no wait for this request; 503 when the partner's certificate cannot be
fetched now (the partner will call again).

``POST /v1/callbacks/webhook/{request_id}/{system}``: a ``partner_webhook`` partner's signed callback, checked by
:func:`connectors.partners.webhook.verify_webhook_callback` over the raw body (timestamp in the replay window,
HMAC signature, not seen before by this process, the body's ``request_id`` is the path's); same answers.

``POST /v1/requests/{id}/tasks/{system}/confirmation`` (admin of the request's tenant; body ``{"note"?}``): a
person confirms a ``manual_task`` system's erasure; ``partner_status`` completed is signalled with the token's
name as actor, and the wait records who and when (audit event ``confirmed``). The note is accepted but not
stored: free text may hold personal data. There is no ``GET /v1/tasks`` listing yet (it needs a search
attribute for the tenant on the partner waits).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.auth import require_role
from api.common import CLIENT, REQUEST_ID, SETTINGS, find_for_tenant, parse_body, read_json, unavailable
from api.problems import Problem
from api.requests_routes import REQUESTS
from connectors.contract import ConfigurationError, ConnectorError
from connectors.partners.manual import REFERENCE as MANUAL_REFERENCE
from connectors.partners.opendsr import STATUSES, OpenDsrConfig
from connectors.partners.opendsr_callbacks import CallbackRejected, partner_certificate, verify_callback
from connectors.partners.webhook import verify_webhook_callback
from workflows.tasks import PartnerStatus, partner_workflow_id

PREFIX = "/v1/callbacks/"
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_WEBHOOK_SEEN: dict[str, float] = {}
"""Signatures of accepted webhook callbacks (with their timestamps), per process; pruned to the replay window."""


def _not_found() -> Problem:
    return Problem(404, "no such partner wait", slug="not-found", title="Not Found")


def _rejected(detail: str) -> Problem:
    return Problem(403, f"callback refused: {detail}", slug="callback-rejected", title="Forbidden")


def _refused(exc: CallbackRejected) -> Problem:
    """400 for a signed body that is not a status, 403 for a callback that is not authentic."""
    if exc.malformed:
        return Problem(400, f"callback malformed: {exc.reason}", slug="malformed-callback")
    return _rejected(exc.reason)


def _partner_system(request: web.Request, type_name: str, id_key: str = "request_id") -> tuple[str, str,
                                                                                                 dict[str, Any]]:
    """The path's request id and system, and the system's options; 404 unless it is a ``type_name`` system."""
    request_id, system = request.match_info[id_key], request.match_info["system"]
    configured = request.app[SETTINGS].systems.get(system)
    if configured is None or configured.type != type_name or not _ID.fullmatch(request_id):
        raise _not_found()
    request[REQUEST_ID] = request_id
    return request_id, system, configured.options()


async def opendsr_callback(request: web.Request) -> web.Response:
    """Verify an OpenDSR callback over its raw body, then signal the partner wait of the request and system."""
    request_id, system, options = _partner_system(request, "opendsr")
    raw = await request.read()
    try:
        config = OpenDsrConfig.parse(options)
        pem = await partner_certificate(options)
    except ConfigurationError:
        raise Problem(500, "the partner system is misconfigured", slug="misconfigured") from None
    except ConnectorError:
        raise unavailable("the partner's certificate cannot be fetched now") from None
    try:
        data = verify_callback(options, request.headers, raw, certificate_pem=pem)
    except CallbackRejected as exc:
        raise _refused(exc) from None
    if data.get("status_callback_url") != config.callback_url(request_id, system):
        raise _rejected("the status_callback_url is not this one")
    reference = data.get("subject_request_id")
    try:
        if not isinstance(reference, str) or str(uuid.UUID(reference)) != reference.lower():
            raise ValueError
    except ValueError:
        raise Problem(400, "callback malformed: subject_request_id is not a UUID", slug="malformed-callback") \
            from None
    status = data.get("request_status")
    if status not in STATUSES:
        raise Problem(400, "callback malformed: request_status is not a known status", slug="malformed-callback")
    signal = PartnerStatus(status=status, received_at=datetime.now(UTC), reference=reference.lower())
    return await signal_partner_wait(request, request_id, system, signal)


async def webhook_callback(request: web.Request) -> web.Response:
    """Verify a signed webhook callback over its raw body, then signal the partner wait of the request and system."""
    request_id, system, options = _partner_system(request, "partner_webhook")
    raw = await request.read()
    try:
        data = verify_webhook_callback(options, request.headers, raw, time.time(), _WEBHOOK_SEEN,
                                       request_id=request_id)
    except ConfigurationError:
        raise Problem(500, "the partner system is misconfigured", slug="misconfigured") from None
    except CallbackRejected as exc:
        raise _refused(exc) from None
    signal = PartnerStatus(status=data["status"], received_at=datetime.now(UTC), reference=request_id)
    return await signal_partner_wait(request, request_id, system, signal)


class ConfirmationBody(BaseModel):
    """Body of ``POST /v1/requests/{id}/tasks/{system}/confirmation``."""

    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=2000, description="Accepted, not stored (may hold PII).")


async def confirm_manual_task(request: web.Request) -> web.Response:
    """An administrator confirms that a manual task of their tenant's request is done."""
    principal = require_role(request, "admin")
    request_id = request.match_info["id"]
    if not REQUESTS.id_pattern.fullmatch(request_id):
        raise REQUESTS.not_found()
    parse_body(ConfirmationBody, await _json_or_empty(request))
    await find_for_tenant(request.app[CLIENT], REQUESTS, request_id, principal.tenant)
    _, system, _ = _partner_system(request, "manual_task", id_key="id")
    signal = PartnerStatus(status="completed", received_at=datetime.now(UTC), reference=MANUAL_REFERENCE,
                           actor=principal.name)
    return await signal_partner_wait(request, request_id, system, signal)


async def _json_or_empty(request: web.Request) -> Mapping[str, Any]:
    """The JSON body; an absent body is ``{}``."""
    if not request.can_read_body:
        return {}
    return await read_json(request)


async def signal_partner_wait(request: web.Request, request_id: str, system: str,
                              signal: PartnerStatus) -> web.Response:
    """Send ``partner_status`` to the wait of ``request_id`` and ``system``; 200 also when it is over already."""
    handle = request.app[CLIENT].get_workflow_handle(partner_workflow_id(request_id, system))
    try:
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            return web.json_response({"accepted": False, "detail": "the wait is over; nothing changes"})
        await handle.signal("partner_status", signal)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise unavailable("the workflow service did not answer; try again") from None
        try:
            await handle.describe()
        except RPCError:
            raise _not_found() from None
        return web.json_response({"accepted": False, "detail": "the wait is over; nothing changes"})
    return web.json_response({"accepted": True})
