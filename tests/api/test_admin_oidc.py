"""The console's OIDC sign-in (authorization code with PKCE) against a small identity provider over real HTTP.

The provider signs users in at once (as one with a live session would): its authorization endpoint redirects
back with a code, its token endpoint checks the PKCE verifier and answers an RS256 ID token carrying the
nonce, and it publishes its key as a JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from temporalio.testing import WorkflowEnvironment

from api.admin.oidc import FLOW_COOKIE
from api.admin.session import SESSION_COOKIE
from tests.api.support import api_client
from workers.config import ConsoleOidcSettings, OidcSettings, Settings

ISSUER = "https://idp.example.test/realms/dsr"
CLIENT_ID = "dsr-console"
PUBLIC_URL = "http://dsr.example.test"


@dataclass
class Provider:
    """A fake identity provider; ``claims`` are the signed-in user's, ``nonce`` overrides the echoed nonce."""

    key: Any = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    claims: dict[str, Any] = field(default_factory=lambda: {"sub": "dana", "dsr_role": "admin",
                                                            "dsr_tenant": "acme"})
    nonce: str | None = None
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    redeemed: list[dict[str, str]] = field(default_factory=list)

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
        assert q["code_challenge_method"] == "S256" and "openid" in q["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = dict(q)
        raise web.HTTPFound(f"{q['redirect_uri']}?code={code}&state={q['state']}")

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.redeemed.append(form)
        asked = self.codes.pop(str(form.get("code")), None)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(str(form.get("code_verifier")).encode()).digest())
        if (asked is None or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != asked["redirect_uri"]
                or challenge.rstrip(b"=").decode() != asked["code_challenge"]):
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        body = {"iss": ISSUER, "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                "nonce": self.nonce if self.nonce is not None else asked["nonce"], **self.claims}
        id_token = jwt.encode(body, self.key, algorithm="RS256", headers={"kid": "k1"})
        return web.json_response({"id_token": id_token, "access_token": "opaque", "token_type": "Bearer"})

    async def jwks(self, request: web.Request) -> web.Response:
        entry = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        entry.update(kid="k1", use="sig", alg="RS256")
        return web.json_response({"keys": [entry]})


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, TestServer]]:
    idp = Provider()
    app = web.Application()
    app.router.add_get("/authorize", idp.authorize)
    app.router.add_post("/token", idp.token)
    app.router.add_get("/jwks", idp.jwks)
    async with TestServer(app, host="127.0.0.1") as server:
        yield idp, server


@pytest.fixture
async def console(provider: tuple[Provider, TestServer], live_settings: Settings,
                  temporal_env: WorkflowEnvironment) -> AsyncIterator[TestClient]:
    _, server = provider
    api = live_settings.api.model_copy(update={
        "public_url": PUBLIC_URL,
        "oidc": OidcSettings(issuer=ISSUER, audience=CLIENT_ID, jwks_url=str(server.make_url("/jwks"))),
        "console_oidc": ConsoleOidcSettings(authorization_endpoint=str(server.make_url("/authorize")),
                                            token_endpoint=str(server.make_url("/token"))),
    })
    async with api_client(live_settings.model_copy(update={"api": api}), temporal_env.client) as tc:
        yield tc


async def sign_in_via_provider(tc: TestClient, *, state: str | None = None) -> aiohttp.ClientResponse:
    """Follow the flow by hand: the console's start, the provider's redirect, the console's callback."""
    start = await tc.get("/admin/oidc/start", allow_redirects=False)
    assert start.status == 303
    flow_cookie = [c for c in start.headers.getall("Set-Cookie") if c.startswith(FLOW_COOKIE + "=")]
    assert flow_cookie and "SameSite=Lax" in flow_cookie[0] and "HttpOnly" in flow_cookie[0]
    async with aiohttp.ClientSession() as http, http.get(start.headers["Location"], allow_redirects=False) as back:
        assert back.status == 302
        location = back.headers["Location"]
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL and parts.path == "/admin/oidc/callback"
    query = parse_qs(parts.query)
    if state is not None:
        query["state"] = [state]
    return await tc.get(parts.path, params={k: v[0] for k, v in query.items()}, allow_redirects=False)


async def test_an_admin_signs_in_through_the_identity_provider(
    console: TestClient, provider: tuple[Provider, TestServer]
) -> None:
    idp, _ = provider
    login = await (await console.get("/admin/login")).text()
    assert 'href="/admin/oidc/start"' in login
    resp = await sign_in_via_provider(console)
    assert resp.status == 200, await resp.text()
    assert 'http-equiv="refresh" content="0;url=/admin/"' in await resp.text()
    [cookie] = [c for c in resp.headers.getall("Set-Cookie") if c.startswith(SESSION_COOKIE + "=")]
    assert "SameSite=Strict" in cookie and "HttpOnly" in cookie
    assert idp.redeemed[-1]["code_verifier"]  # PKCE: the verifier went to the token endpoint only
    queue = await console.get("/admin/", allow_redirects=False)
    assert queue.status == 200
    assert "oidc:dana" in await queue.text() and "tenant acme" in await queue.text()


async def test_a_forged_state_a_wrong_nonce_or_a_portal_role_is_refused(
    console: TestClient, provider: tuple[Provider, TestServer]
) -> None:
    idp, _ = provider
    resp = await sign_in_via_provider(console, state="not-the-state")
    assert resp.status == 401 and "did not start here" in await resp.text()
    assert not idp.redeemed  # the code was never redeemed

    idp.nonce = "another-nonce"
    resp = await sign_in_via_provider(console)
    assert resp.status == 401 and "could not be verified" in await resp.text()

    idp.nonce = None
    idp.claims = {"sub": "pat", "dsr_role": "portal", "dsr_tenant": "acme"}
    resp = await sign_in_via_provider(console)
    assert resp.status == 403 and "role cannot use the console" in await resp.text()
    assert not [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith(SESSION_COOKIE + "=")]
    assert (await console.get("/admin/", allow_redirects=False)).status == 303


async def test_without_console_oidc_there_is_no_oidc_route(live_api: TestClient) -> None:
    assert 'href="/admin/oidc/start"' not in await (await live_api.get("/admin/login")).text()
    assert (await live_api.get("/admin/oidc/start", allow_redirects=False)).status == 404
