"""Signing in to the console through the identity provider: authorization code flow with PKCE.

``GET /admin/oidc/start`` sends the browser to the provider's authorization endpoint with a fresh ``state``,
``nonce`` and PKCE ``code_challenge`` (S256, RFC 7636); the three secrets travel in a signed, HttpOnly cookie
that lives ten minutes (``SameSite=Lax``: the provider's redirect back is a cross-site navigation, which a
``Strict`` cookie would not follow). ``GET /admin/oidc/callback`` checks ``state`` against that cookie (in
constant time), redeems the code with the verifier, verifies the ID token with the API's own
:class:`api.oidc.OidcVerifier` (issuer, audience, signature from the JWKS, role and tenant claims) and
its ``nonce``, then opens a console session as for an API key. The token is not kept.

Only the ``admin``, ``privacy_officer`` and ``auditor`` roles may sign in. No token, code or claim value
is logged or shown in an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from api.admin.session import CODEC_COOKIE_PATH, CODEC_SESSION_COOKIE, CONSOLE_ROLES, SESSION_COOKIE, SESSION_SECONDS
from api.admin.views import KEYS, SECURITY_HEADERS, login_form, render
from api.auth import Principal
from api.common import SETTINGS
from api.oidc import JwksUnavailable, OidcVerifier, TokenRejected
from workers.config import ConsoleOidcSettings

FLOW_COOKIE = "dsr_admin_oidc"
FLOW_PATH = "/admin/oidc"
FLOW_SECONDS = 600
CALLBACK_PATH = "/admin/oidc/callback"
VERIFIER = web.AppKey("admin_oidc_verifier", OidcVerifier)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _console(request: web.Request) -> ConsoleOidcSettings:
    console = request.app[SETTINGS].api.console_oidc
    if console is None or VERIFIER not in request.app:
        raise web.HTTPNotFound()
    return console


def redirect_uri(request: web.Request) -> str:
    """Where the provider sends the browser back: the API's public URL and the callback path."""
    return request.app[SETTINGS].api.public_url.rstrip("/") + CALLBACK_PATH


async def start(request: web.Request) -> web.StreamResponse:
    """``GET /admin/oidc/start``: to the provider's authorization endpoint, with state, nonce and PKCE."""
    console = _console(request)
    keys = request.app[KEYS]
    flow = {"state": secrets.token_urlsafe(24), "nonce": secrets.token_urlsafe(24),
            "verifier": secrets.token_urlsafe(48)}
    scopes = list(dict.fromkeys(["openid", *console.scopes]))
    query = urlencode({
        "response_type": "code",
        "client_id": request.app[SETTINGS].api.oidc.audience,  # type: ignore[union-attr]  # checked by _console
        "redirect_uri": redirect_uri(request),
        "scope": " ".join(scopes),
        "state": flow["state"],
        "nonce": flow["nonce"],
        "code_challenge": pkce_challenge(flow["verifier"]),
        "code_challenge_method": "S256",
    })
    separator = "&" if "?" in console.authorization_endpoint else "?"
    response = web.HTTPSeeOther(f"{console.authorization_endpoint}{separator}{query}", headers=SECURITY_HEADERS)
    keys.set_cookie(response, FLOW_COOKIE, keys.seal("oidc", flow, FLOW_SECONDS), FLOW_SECONDS, path=FLOW_PATH,
                    samesite="Lax")
    raise response


async def _redeem(console: ConsoleOidcSettings, client_id: str, code: str, verifier: str, redirect: str) -> str:
    """The ID token for ``code`` from the token endpoint.

    Raises:
        TokenRejected: The endpoint refused the code or answered without an ID token.
        JwksUnavailable: The endpoint could not be reached.
    """
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "client_id": client_id,
            "code_verifier": verifier}
    if console.client_secret_env:
        secret = os.environ.get(console.client_secret_env)
        if secret:
            form["client_secret"] = secret
    timeout = aiohttp.ClientTimeout(total=console.timeout_seconds)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
            console.token_endpoint, data=form, headers={"Accept": "application/json"}, allow_redirects=False,
        ) as resp:
            if resp.status != 200:
                raise TokenRejected("the identity provider refused the sign-in code")
            body: Any = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise JwksUnavailable("the identity provider's token endpoint did not answer") from None
    token = body.get("id_token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise TokenRejected("the identity provider sent no ID token")
    return token


async def callback(request: web.Request) -> web.StreamResponse:
    """``GET /admin/oidc/callback``: check state, redeem the code, verify the ID token, open the session."""
    console = _console(request)
    keys = request.app[KEYS]
    flow = keys.unseal("oidc", request.cookies.get(FLOW_COOKIE))
    state = request.query.get("state", "")
    if flow is None or not hmac.compare_digest(str(flow.get("state", "")).encode(), state.encode()):
        return await _refused(request, "The sign-in did not start here or took too long; try again.", 401)
    if "error" in request.query or not request.query.get("code"):
        return await _refused(request, "The identity provider did not sign you in.", 401)
    settings = request.app[SETTINGS].api
    try:
        id_token = await _redeem(console, settings.oidc.audience, request.query["code"],  # type: ignore[union-attr]
                                 str(flow["verifier"]), redirect_uri(request))
        verified = await request.app[VERIFIER].verify(id_token)
    except TokenRejected:
        return await _refused(request, "The identity provider's answer could not be verified.", 401)
    except JwksUnavailable:
        return await _refused(request, "The identity provider cannot be reached now; try again.", 503)
    nonce = verified.claims.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), str(flow["nonce"]).encode()):
        return await _refused(request, "The identity provider's answer could not be verified.", 401)
    if verified.role not in CONSOLE_ROLES:
        return await _refused(request, "Your role cannot use the console.", 403)
    cookie, _ = keys.issue(Principal(name=verified.name, role=verified.role, tenant=verified.tenant), via="oidc")
    # The browser came here from the provider (a cross-site navigation): a redirect would not carry the new
    # SameSite=Strict cookie yet, so a page hands over to the console with a same-site refresh.
    response = await render(request, "signed_in.html", {})
    keys.set_cookie(response, SESSION_COOKIE, cookie, SESSION_SECONDS)
    keys.set_cookie(response, CODEC_SESSION_COOKIE, cookie, SESSION_SECONDS, path=CODEC_COOKIE_PATH)
    keys.clear_cookie(response, FLOW_COOKIE, path=FLOW_PATH, samesite="Lax")
    return response


async def _refused(request: web.Request, why: str, status: int) -> web.StreamResponse:
    return await login_form(request, error=why, status=status)


def setup_oidc(app: web.Application, prefix: str) -> None:
    """Register the OIDC sign-in when ``[api.console_oidc]`` and ``[api.oidc]`` are configured."""
    api = app[SETTINGS].api
    if api.console_oidc is None or api.oidc is None:
        return
    app[VERIFIER] = OidcVerifier(api.oidc)

    async def close(app: web.Application) -> None:
        await app[VERIFIER].close()

    app.on_cleanup.append(close)
    app.router.add_get(f"{prefix}/oidc/start", start)
    app.router.add_get(f"{prefix}/oidc/callback", callback)
