"""The aiohttp application: routes, authentication, problem details and access logs.

Middlewares, outermost first: metrics (calls by route template and status, workers/metrics.py), the
access log (sees the final status), problem details (turns every error into ``application/problem+json``),
authentication.
"""

from __future__ import annotations

import hashlib
import os
import time

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from temporalio.client import Client

from api.admin import setup_admin
from api.audit_routes import DATABASE, OrchestratorDatabase
from api.auth import Authenticator, TokenTable, auth_middleware
from api.common import CLIENT, MAX_BODY_BYTES, REQUEST_ID, SECRETS, SETTINGS
from api.ids import RequestSecrets
from api.oidc import OidcVerifier
from api.problems import problem_middleware
from api.routes import setup_routes
from workers.codec import load_keys
from workers.config import Settings
from workers.metrics import observe_api_call

__all__ = ["AUTHENTICATOR", "CLIENT", "SECRETS", "SETTINGS", "access_log_middleware", "create_app", "server_secret"]

log = structlog.get_logger()

AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
"""API keys and the OIDC verifier, for parts of the app that authenticate themselves (the admin console)."""


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
    """Log one line per call (method, route template, status, the opaque request id) and count it in the metrics.

    The route template (``/v1/requests/{id}``) is logged and counted rather than the path, and no header,
    query string or body, so that nothing a caller sent can reach the logs or the metrics' labels.
    """
    started = time.perf_counter()
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
        observe_api_call(request.method, resource.canonical if resource is not None else "unmatched", status,
                         time.perf_counter() - started)


def create_app(settings: Settings, client: Client, db_pool: asyncpg.Pool | None = None) -> web.Application:
    """Build the API application.

    Args:
        settings: The configuration (tokens, OIDC, tenants, task queue, codec key location, database URL).
        client: A Temporal client built with the project's data converter (encrypting codec).
        db_pool: A pool on the orchestrator database; else one is created on first use from the configured
            URL, if any (the audit route answers 503 without a database).

    Returns:
        The application; ``settings`` and ``client`` are stored under :data:`SETTINGS` and :data:`CLIENT`.

    Raises:
        workers.codec.CodecKeyError: No codec key is configured (it is the server secret).
    """
    oidc = OidcVerifier(settings.api.oidc) if settings.api.oidc is not None else None
    authenticator = Authenticator(TokenTable(settings.api.tokens), oidc)
    app = web.Application(
        middlewares=[access_log_middleware, problem_middleware,
                     auth_middleware(authenticator)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[AUTHENTICATOR] = authenticator
    app[DATABASE] = OrchestratorDatabase(settings.orchestrator_database_url(), pool=db_pool)

    async def close_resources(app: web.Application) -> None:
        await app[DATABASE].close()
        if oidc is not None:
            await oidc.close()

    app.on_cleanup.append(close_resources)
    app[SETTINGS] = settings
    app[CLIENT] = client
    app[SECRETS] = RequestSecrets.derive(server_secret(settings))
    setup_routes(app)
    setup_admin(app)  # the admin console under /admin (api/admin/)
    return app
