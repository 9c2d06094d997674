"""The admin console: server-rendered pages under ``/admin`` for administrators and privacy officers.

| Method | Path                                              | What                                         |
|--------|---------------------------------------------------|----------------------------------------------|
| GET    | /admin, /admin/                                   | the queue (sign-in page without a session)   |
| GET    | /admin/login                                      | sign-in form (API key)                       |
| GET    | /admin/oidc/start, /admin/oidc/callback           | sign-in through the identity provider (PKCE) |
| POST   | /admin/login, /admin/logout                       | sign in, sign out                            |
| GET    | /admin/requests/{id}                              | a request: timeline, systems, evidence, forms |
| POST   | /admin/requests/{id}/{action}                     | decision, extension, objection, lifting, retry |
| POST   | /admin/requests/{id}/tasks/{system}/confirmation  | confirm a manual partner task                |
| GET    | /admin/disputes/{id}                              | a dispute and its resolution form            |
| POST   | /admin/disputes/{id}/resolution                   | resolve a dispute                            |
| GET    | /admin/static/...                                 | the style sheet                              |

The bearer middleware leaves ``/admin`` to the console's own session cookie (api/auth.py); what a signed-in
user may see and do is what their API token may in the JSON API, on their own tenant only.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from api.admin.oidc import setup_oidc
from api.admin.revocations import revocation_sync
from api.admin.session import CODEC_SESSION_COOKIE, SessionKeys
from api.admin.views import (
    JINJA,
    KEYS,
    TOKENS,
    dispute_page,
    dispute_resolution,
    login,
    login_page,
    logout,
    queue_page,
    request_action,
    request_page,
    task_confirmation,
    to_console,
)
from api.auth import COOKIE_AUTH, Principal, TokenTable
from api.common import SECRETS, SETTINGS

ADMIN_PREFIX = "/admin"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "admin"

__all__ = ["ADMIN_PREFIX", "setup_admin"]


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value is not None else ""


def _codec_cookie_principal(request: web.Request) -> Principal | None:
    """The signed-in console user, for the codec endpoint: only from an allowed Temporal UI origin.

    The cookie is SameSite=Strict and the Origin must be one the codec endpoint allows (CORS), so a page of
    another origin can neither send it nor read what comes back.
    """
    from api.codec_endpoint import ORIGINS

    origin = request.headers.get("Origin")
    if origin is None or origin not in request.app.get(ORIGINS, frozenset()):
        return None
    session = request.app[KEYS].read(request.cookies.get(CODEC_SESSION_COOKIE))
    return session.principal if session is not None else None


def setup_admin(app: web.Application) -> None:
    """Register the console on ``app`` (after :data:`api.common.SETTINGS` and :data:`SECRETS` are set)."""
    settings = app[SETTINGS]
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES), app_key=JINJA, autoescape=True,
                               undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    oidc_issuer = settings.api.oidc.issuer if settings.api.oidc and settings.api.console_oidc else None
    app[KEYS] = SessionKeys(app[SECRETS].server_secret, settings.api.tokens,
                            secure=settings.api.public_url.lower().startswith("https://"), oidc_issuer=oidc_issuer)
    app[TOKENS] = TokenTable(settings.api.tokens)
    app[COOKIE_AUTH] = _codec_cookie_principal
    app.cleanup_ctx.append(revocation_sync)  # sign-outs of the other replicas
    app.router.add_get(ADMIN_PREFIX, to_console)
    app.router.add_get(f"{ADMIN_PREFIX}/", queue_page)
    app.router.add_get(f"{ADMIN_PREFIX}/login", login_page)
    app.router.add_post(f"{ADMIN_PREFIX}/login", login)
    app.router.add_post(f"{ADMIN_PREFIX}/logout", logout)
    app.router.add_get(f"{ADMIN_PREFIX}/requests/{{id}}", request_page)
    app.router.add_post(f"{ADMIN_PREFIX}/requests/{{id}}/tasks/{{system}}/confirmation", task_confirmation)
    app.router.add_post(f"{ADMIN_PREFIX}/requests/{{id}}/{{action}}", request_action)
    app.router.add_get(f"{ADMIN_PREFIX}/disputes/{{id}}", dispute_page)
    app.router.add_post(f"{ADMIN_PREFIX}/disputes/{{id}}/resolution", dispute_resolution)
    setup_oidc(app, ADMIN_PREFIX)  # GET /admin/oidc/start, /admin/oidc/callback when configured
    app.router.add_static(f"{ADMIN_PREFIX}/static", TEMPLATES / "static")
