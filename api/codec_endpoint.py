"""Temporal's remote codec protocol, so the Temporal Web UI and ``temporal ... --codec-endpoint`` show payloads.

- ``POST /codec/decode``: opens payloads sealed by :class:`workers.codec.AesGcmCodec`; others pass through.
- ``POST /codec/encode``: seals payloads with the current key (the UI uses it to send signals and updates).

Bodies in and out are the JSON form of ``temporal.api.common.v1.Payloads``:
``{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}``. An ``X-Namespace``
header, when sent, must name the configured namespace.

Bearer tokens with the role admin or privacy_officer only. A privacy officer of all tenants sees every
payload; a token of one tenant (an administrator) gets back opened only the payloads that are JSON
objects naming that tenant (a request's input, status, updates): anything else stays sealed, so that
such a token reads neither another tenant's subjects nor data that names no tenant at all.

A payload sealed with a key this server does not hold, or with a request's data key that was destroyed
(crypto-shredding), stays sealed in the answer; one that does not open with its key (altered) is a 422.

Browsers: the configured Temporal UI origins (``temporal.ui_origins``) get CORS headers with
credentials; their preflight (``OPTIONS``) is answered without a token (see api/auth.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web
from cryptography.exceptions import InvalidTag
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from api.auth import Principal, require_role
from api.common import CLIENT, SETTINGS
from api.problems import Problem
from workers.codec import CodecKeyError
from workers.keys import DataKeyError
from workers.temporal import codec_for

PREFIX = "/codec/"
MAX_CODEC_BODY_BYTES = 4 * 1024 * 1024
"""The UI sends a whole page of history's payloads at once: more than the API's other bodies."""
CODEC_ROLES = ("admin", "privacy_officer")
ALLOW_HEADERS = "Authorization, Content-Type, X-Namespace"
ALLOW_METHODS = "POST, OPTIONS"
PREFLIGHT_MAX_AGE = "600"

CODEC = web.AppKey("codec", PayloadCodec)
ORIGINS = web.AppKey("codec_origins", frozenset)


def _bad_body(detail: str) -> Problem:
    return Problem(400, detail, slug="invalid-payloads", title="Invalid payloads")


async def _read_payloads(request: web.Request) -> list[Payload]:
    """The request's payloads; 400 for a body that is not the JSON form of ``Payloads``, 413 when too large."""
    if request.content_type != "application/json":
        raise Problem(415, "the body must be application/json", slug="unsupported-media-type",
                      title="Unsupported Media Type")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_CODEC_BODY_BYTES:
            raise Problem(413, f"the body exceeds {MAX_CODEC_BODY_BYTES} bytes", slug="body-too-large",
                          title="Payload Too Large")
        chunks.append(chunk)
    try:
        message = json_format.Parse(b"".join(chunks), Payloads(), ignore_unknown_fields=False)
    except (json_format.ParseError, UnicodeDecodeError, ValueError):
        # Neither the body nor the parser's message (it quotes the input) is repeated.
        raise _bad_body('the body must be {"payloads": [{"metadata": {...}, "data": "<base64>"}]}') from None
    return list(message.payloads)


def _answer(payloads: Sequence[Payload]) -> web.Response:
    return web.Response(text=json_format.MessageToJson(Payloads(payloads=payloads)), content_type="application/json")


def _check_namespace(request: web.Request) -> None:
    namespace = request.headers.get("X-Namespace")
    expected = request.app[SETTINGS].temporal.namespace
    if namespace is not None and namespace != expected:
        raise Problem(403, f"this codec serves the namespace {expected} only", slug="wrong-namespace",
                      title="Forbidden")


def _readable_by(principal: Principal, payload: Payload) -> bool:
    """Whether ``principal`` may see ``payload`` opened: an all-tenant privacy officer always, else its tenant's."""
    if principal.role == "privacy_officer" and not principal.tenant:
        return True
    if payload.metadata.get("encoding") != b"json/plain":
        return False
    try:
        value = json.loads(payload.data)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("tenant") == principal.tenant


async def decode(request: web.Request) -> web.Response:
    """``POST /codec/decode``: the payloads opened (those the caller may read; the others as sent)."""
    principal = require_role(request, *CODEC_ROLES)
    _check_namespace(request)
    codec = request.app[CODEC]
    answer = []
    for payload in await _read_payloads(request):
        try:
            [opened] = await codec.decode([payload])
        except (CodecKeyError, DataKeyError):
            # A key this server does not hold, or a request's data key destroyed (crypto-shredded): the
            # payload stays sealed, as the UI shows any payload it cannot read, and the others still open.
            opened = payload
        except InvalidTag:
            raise Problem(422, "a payload does not open with its key: it was altered", slug="payload-altered",
                          title="Payload altered") from None
        answer.append(opened if _readable_by(principal, opened) else payload)
    return _answer(answer)


async def encode(request: web.Request) -> web.Response:
    """``POST /codec/encode``: the payloads sealed with the current key."""
    require_role(request, *CODEC_ROLES)
    _check_namespace(request)
    return _answer(await request.app[CODEC].encode(await _read_payloads(request)))


async def preflight(request: web.Request) -> web.Response:
    """``OPTIONS /codec/{op}``: a CORS preflight from an allowed origin (403 from any other)."""
    if request.headers.get("Origin") not in request.app[ORIGINS]:
        raise Problem(403, "this origin may not call the codec endpoint", slug="forbidden-origin", title="Forbidden")
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
    })


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under /codec/ to an allowed origin, errors included, carries its CORS headers."""
    if not request.path.startswith(PREFIX):
        return
    origin = request.headers.get("Origin")
    response.headers.add("Vary", "Origin")
    if origin in request.app[ORIGINS]:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"


def setup_codec_routes(app: web.Application) -> None:
    """Register the codec routes and their CORS handling on ``app`` (which holds ``SETTINGS`` and ``CLIENT``).

    Raises:
        workers.codec.CodecKeyError: No codec key is configured.
    """
    settings = app[SETTINGS]
    # The API client's own codec, so that whatever keys it seals with (master, per-request data keys) open here.
    app[CODEC] = app[CLIENT].data_converter.payload_codec or codec_for(settings)
    app[ORIGINS] = frozenset(settings.temporal.allowed_ui_origins())
    for op, handler in (("decode", decode), ("encode", encode)):
        app.router.add_post(PREFIX + op, handler)
        app.router.add_route("OPTIONS", PREFIX + op, preflight)
    app.on_response_prepare.append(_cors_headers)
