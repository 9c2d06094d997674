"""The aiohttp application: routes, authentication, problem details and access logs.

Middlewares, outermost first: the access log (sees the final status), problem
details (turns every error into ``application/problem+json``), authentication.
"""

from __future__ import annotations

import hashlib
import os

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from temporalio.client import Client

from api.auth import TokenTable, auth_middleware
from api.common import CLIENT, MAX_BODY_BYTES, REQUEST_ID, SECRETS, SETTINGS
from api.ids import RequestSecrets
from api.problems import problem_middleware
from api.routes import setup_routes
from workers.codec import load_keys
from workers.config import Settings

__all__ = ["CLIENT", "SECRETS", "SETTINGS", "access_log_middleware", "create_app", "server_secret"]

log = structlog.get_logger()


def server_secret(settings: Settings) -> bytes:
    """The secret behind idempotent ids, fingerprints and subject keys.

    The environment variable named by ``api.secret_env`` when set (so that rotating codec keys does not change
    the ids of retried requests), else the current (first) codec key.

    Raises:
        workers.codec.CodecKeyError: No codec key is configured.
    """
    explicit = os.environ.get(settings.api.secret_env)
    if explicit:
        return hashlib.sha256(b"dsr-api-secret:" + explicit.encode()).digest()
    return load_keys(settings.codec.key_env, settings.codec_key_file)[0]


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log one line per call: method, route template, status and the opaque request id. Nothing else.

    The route template (``/v1/requests/{id}``) is logged rather than the path, and no header,
    query string or body, so that nothing a caller sent can reach the logs.
    """
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        log.info(
            "api.request",
            method=request.method,
            route=resource.canonical if resource is not None else "-",
            status=status,
            request_id=request.get(REQUEST_ID),
        )


def create_app(settings: Settings, client: Client) -> web.Application:
    """Build the API application.

    Args:
        settings: The configuration (tokens, tenants, task queue, codec key location).
        client: A Temporal client built with the project's data converter (encrypting codec).

    Returns:
        The application; ``settings`` and ``client`` are stored under :data:`SETTINGS` and :data:`CLIENT`.

    Raises:
        workers.codec.CodecKeyError: No codec key is configured (it is the server secret).
    """
    app = web.Application(
        middlewares=[access_log_middleware, problem_middleware, auth_middleware(TokenTable(settings.api.tokens))],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[CLIENT] = client
    app[SECRETS] = RequestSecrets.derive(server_secret(settings))
    setup_routes(app)
    return app
