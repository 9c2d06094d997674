"""``POST /v1/callbacks/opendsr/{request_id}/{system}``: a partner's OpenDSR status callback.

No bearer token: the callback is authorised by its own signature. Before anything is parsed, the raw body's
``X-OpenDSR-Signature`` (or legacy ``X-OpenGDPR-Signature``) is verified with the certificate of the system's
partner, whose domain must be on the system's allow-list (:func:`connectors.partners.opendsr.verify_callback`).
Then the body must name this very URL as its ``status_callback_url`` (a genuine callback of another request
replayed here is refused) and carry a UUID ``subject_request_id``; the status is signalled to the system's
``PartnerWaitWorkflow``.

Answers: 200 when signalled, and 200 too when the wait is already over (callbacks repeat; a late or replayed
one changes nothing); 403 for a callback that is not authentic or not ours; 400 for a signed body that is not
a status; 404 for an unknown system or no wait for this request; 503 when the partner's certificate cannot be
fetched now (the partner will call again).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from aiohttp import web
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.common import CLIENT, REQUEST_ID, SETTINGS, unavailable
from api.problems import Problem
from connectors.contract import ConfigurationError, ConnectorError
from connectors.partners.opendsr import STATUSES, CallbackRejected, OpenDsrConfig, partner_certificate, verify_callback
from workflows.tasks import PartnerStatus, partner_workflow_id

PREFIX = "/v1/callbacks/"
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _not_found() -> Problem:
    return Problem(404, "no such partner wait", slug="not-found", title="Not Found")


def _rejected(detail: str) -> Problem:
    return Problem(403, f"callback refused: {detail}", slug="callback-rejected", title="Forbidden")


async def opendsr_callback(request: web.Request) -> web.Response:
    """Verify an OpenDSR callback over its raw body, then signal the partner wait of the request and system."""
    settings = request.app[SETTINGS]
    request_id, system = request.match_info["request_id"], request.match_info["system"]
    configured = settings.systems.get(system)
    if configured is None or configured.type != "opendsr" or not _ID.fullmatch(request_id):
        raise _not_found()
    request[REQUEST_ID] = request_id
    options = configured.options()
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
        if exc.malformed:
            raise Problem(400, f"callback malformed: {exc.reason}", slug="malformed-callback") from None
        raise _rejected(exc.reason) from None
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
