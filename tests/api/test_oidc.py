"""OIDC bearer tokens: JWTs verified against a JWKS served over real HTTP by a small aiohttp app.

Keys are made with ``cryptography``; tokens are signed with PyJWT, or forged by hand where PyJWT
refuses to make them (``alg: none``, HS256 keyed with the public key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from api.auth import principal_of
from tests.api.support import api_client, assert_problem, auth
from workers.config import OidcSettings, Settings

ISSUER = "https://idp.example.test/realms/dsr"
AUDIENCE = "dsr-api"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Idp:
    """A fake identity provider: signing keys, and the JWKS it publishes (mutable, to rotate keys)."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.published: list[dict[str, Any]] = [self.jwk(self.rsa, "rsa-1"), self.jwk(self.ec, "ec-1")]
        self.fetches = 0

    @staticmethod
    def jwk(key: Any, kid: str) -> dict[str, Any]:
        algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        entry = json.loads(algorithm.to_jwk(key.public_key()))
        entry.update(kid=kid, use="sig")
        return entry

    def token(self, *, key: Any = None, kid: str = "rsa-1", alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.rsa, algorithm=alg, headers={"kid": kid})

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.published})


@pytest.fixture
async def idp() -> AsyncIterator[tuple[Idp, str]]:
    provider = Idp()
    app = web.Application()
    app.router.add_get("/jwks", provider.jwks)
    server = TestServer(app)
    await server.start_server()
    yield provider, str(server.make_url("/jwks"))
    await server.close()


def with_oidc(settings: Settings, jwks_url: str) -> Settings:
    oidc = OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url, jwks_min_refetch_seconds=0,
                        leeway_seconds=5, jwks_timeout_seconds=2)
    return settings.model_copy(update={"api": settings.api.model_copy(update={"oidc": oidc})})


async def whoami(request: web.Request) -> web.Response:
    who = principal_of(request)
    return web.json_response({"name": who.name, "role": who.role, "tenant": who.tenant})


@pytest.fixture
async def api(idp, idle_settings, temporal_env) -> AsyncIterator[TestClient]:
    _, url = idp
    async with api_client(with_oidc(idle_settings, url), temporal_env.client,
                          app_hook=lambda app: app.router.add_get("/test/whoami", whoami)) as tc:
        yield tc


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_valid_token_gives_its_role_and_tenant(api, idp):
    provider, _ = idp
    resp = await api.get("/test/whoami", headers=bearer(provider.token(dsr_role="admin", dsr_tenant="acme")))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"name": "oidc:user-1", "role": "admin", "tenant": "acme"}

    es = provider.token(key=provider.ec, kid="ec-1", alg="ES256", dsr_role="auditor", sub="auditor-7")
    resp = await api.get("/test/whoami", headers=bearer(es))
    assert await resp.json() == {"name": "oidc:auditor-7", "role": "auditor", "tenant": None}
    assert provider.fetches == 1  # cached

    # A real route: the admin reads a listing of their tenant (not 401/403).
    resp = await api.get("/v1/requests", headers=bearer(provider.token(dsr_role="admin", dsr_tenant="acme")))
    assert resp.status == 200, await resp.text()


async def test_an_email_as_subject_never_becomes_the_actor(api, idp):
    provider, _ = idp
    resp = await api.get("/test/whoami", headers=bearer(provider.token(dsr_role="privacy_officer",
                                                                      sub="jane.doe@example.com")))
    name = (await resp.json())["name"]
    assert name.startswith("oidc:") and "@" not in name and "jane" not in name


async def test_api_keys_still_work_beside_oidc(api):
    resp = await api.get("/test/whoami", headers=auth("portal-acme"))
    assert await resp.json() == {"name": "portal-acme", "role": "portal", "tenant": "acme"}


async def test_a_rotated_key_is_fetched_on_its_unknown_kid(api, idp):
    provider, _ = idp
    assert (await api.get("/test/whoami", headers=bearer(provider.token(dsr_role="auditor")))).status == 200
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    provider.published = [provider.jwk(new, "rsa-2")]
    resp = await api.get("/test/whoami", headers=bearer(provider.token(key=new, kid="rsa-2", dsr_role="auditor")))
    assert resp.status == 200, await resp.text()
    assert provider.fetches == 2


def _forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now, "exp": now + 300, "dsr_role": "admin",
            "dsr_tenant": "acme", **extra}


def _refused_tokens(provider: Idp) -> dict[str, str]:
    now = int(time.time())
    public_pem = provider.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    hs_signing_input = f"{_b64(json.dumps(hs_header).encode())}.{_b64(json.dumps(_claims()).encode())}".encode()
    valid = provider.token(dsr_role="portal", dsr_tenant="acme")
    head, payload, sig = valid.split(".")
    tampered_payload = _b64(json.dumps({**json.loads(base64.urlsafe_b64decode(payload + "==")),
                                        "dsr_role": "admin"}).encode())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "expired": provider.token(dsr_role="admin", dsr_tenant="acme", iat=now - 3600, exp=now - 600),
        "not-yet-valid": provider.token(dsr_role="admin", dsr_tenant="acme", nbf=now + 600),
        "wrong-audience": provider.token(dsr_role="admin", dsr_tenant="acme", aud="another-api"),
        "wrong-issuer": provider.token(dsr_role="admin", dsr_tenant="acme", iss="https://evil.example"),
        "unknown-kid": provider.token(key=stranger, kid="rsa-9", dsr_role="admin", dsr_tenant="acme"),
        "known-kid-other-key": provider.token(key=stranger, kid="rsa-1", dsr_role="admin", dsr_tenant="acme"),
        "alg-none": _forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, _claims(), b""),
        "hs256-with-public-key": hs_signing_input.decode() + "." + _b64(
            hmac.new(public_pem, hs_signing_input, hashlib.sha256).digest()),
        "tampered": f"{head}.{tampered_payload}.{sig}",
        "ec-key-for-rs256": provider.token(key=provider.rsa, kid="ec-1", dsr_role="admin", dsr_tenant="acme"),
        "no-exp": jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, provider.rsa, algorithm="RS256",
                             headers={"kid": "rsa-1"}),
        "unknown-role": provider.token(dsr_role="superuser", dsr_tenant="acme"),
        "role-not-a-string": provider.token(dsr_role={"admin": True}, dsr_tenant="acme"),
        "two-roles": provider.token(dsr_role=["admin", "auditor"], dsr_tenant="acme"),
        "tenant-not-a-name": provider.token(dsr_role="admin", dsr_tenant=["acme"]),
        "admin-without-tenant": provider.token(dsr_role="admin"),
    }


REFUSED = ["expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "unknown-kid", "known-kid-other-key",
           "alg-none", "hs256-with-public-key", "tampered", "ec-key-for-rs256", "no-exp", "unknown-role",
           "role-not-a-string", "two-roles", "tenant-not-a-name", "admin-without-tenant"]


@pytest.mark.parametrize("case", REFUSED)
async def test_bad_tokens_are_refused_with_401(api, idp, case):
    provider, _ = idp
    token = _refused_tokens(provider)[case]
    resp = await api.get("/test/whoami", headers=bearer(token))
    doc = await assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="dsr", error="invalid_token"'
    assert token not in json.dumps(doc)
    # and on a real route too
    await assert_problem(await api.get("/v1/requests", headers=bearer(token)), 401)


async def test_an_unreachable_jwks_is_503(idle_settings, temporal_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = Idp()
    settings = with_oidc(idle_settings, f"http://127.0.0.1:{port}/jwks")
    async with api_client(settings, temporal_env.client) as tc:
        resp = await tc.get("/v1/requests", headers=bearer(provider.token(dsr_role="auditor")))
        await assert_problem(resp, 503)
        assert resp.headers["Retry-After"]
