"""The permission matrix: every route of the router, against every role and tenant.

For each route the matrix says which roles may call it and whether it is bound to the resource's tenant.
Every configured token is tried on every route, on resources of tenant ``acme`` (a request waiting for
approval and a dispute, run by the live worker):

- a role the route does not allow gets 403;
- an allowed role of another tenant gets 404 on a tenant-bound route (the resource "does not exist");
- an allowed role of the resource's tenant, or of every tenant, gets neither 401 nor 403 (nor 404 where
  the resource is there to be found);
- no token, or a bad one, gets 401 on every route that takes a token; the signed and public routes
  answer the same with and without a token.

The list of routes comes from the application's router: a route added without a matrix entry fails
:func:`test_every_route_has_a_matrix_entry`. The admin console (``/admin``) is left out: it authenticates
with its own session cookie and has its own tests (tests/api/test_admin*.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from tests.api.support import READER_TOKENS, TOKENS, api_client, auth, body, dispute_body, key
from tests.conftest import fresh_database
from workers.config import Settings

OWNER = "acme"
REQ = "req_aaaaaaaaaaaaaaaaaaaaaaaaaa"
EXEMPT_PREFIXES = ("/admin",)
ALL_TOKENS: dict[str, tuple[str, str | None]] = {**TOKENS, **READER_TOKENS}
EVERYONE = frozenset({"portal", "admin", "privacy_officer", "auditor"})
READERS = frozenset({"admin", "privacy_officer", "auditor"})


@dataclass(frozen=True)
class Entry:
    """What a route allows.

    Attributes:
        access: ``token`` (bearer token and role), ``signed`` (its own signature), ``public`` (no check),
            ``preflight`` (a CORS preflight, answered without a token).
        roles: The roles allowed (``token`` routes).
        scoped: Whether the route acts on a resource of one tenant (another tenant's is 404).
        reachable: Whether an allowed caller of the owner's tenant finds the resource (not 404).
        payload: The JSON body sent.
    """

    access: Literal["token", "signed", "public", "preflight"] = "token"
    roles: frozenset[str] = field(default_factory=frozenset)
    scoped: bool = False
    reachable: bool = True
    payload: dict[str, Any] | None = None


def token_route(roles: set[str] | frozenset[str], *, scoped: bool = True, reachable: bool = True,
                payload: dict[str, Any] | None = None) -> Entry:
    return Entry(roles=frozenset(roles), scoped=scoped, reachable=reachable, payload=payload)


MATRIX: dict[tuple[str, str], Entry] = {
    ("GET", "/healthz"): Entry(access="public"),
    ("GET", "/readyz"): Entry(access="public"),
    ("GET", "/openapi.json"): Entry(access="public"),
    ("GET", "/metrics"): Entry(access="public"),
    ("POST", "/v1/requests"): token_route({"portal"}, scoped=False, payload=body()),
    ("GET", "/v1/requests"): token_route(EVERYONE, scoped=False),
    ("GET", "/v1/requests/{id}"): token_route(EVERYONE),
    ("GET", "/v1/requests/{id}/audit"): token_route(READERS),
    ("GET", "/v1/requests/{id}/evidence"): token_route(READERS),
    ("GET", "/v1/requests/{id}/evidence.html"): token_route(READERS),
    ("POST", "/v1/requests/{id}/decision"): token_route({"admin"}, payload={"outcome": "approve"}),
    ("POST", "/v1/requests/{id}/verification"): token_route({"portal", "admin"}, payload={"method": "email-link"}),
    ("POST", "/v1/requests/{id}/extension"): token_route({"admin", "privacy_officer"},
                                                          payload={"months": 1, "reason": "many systems"}),
    ("POST", "/v1/requests/{id}/cancellation"): token_route({"portal", "admin"}, payload={}),
    ("POST", "/v1/requests/{id}/objection"): token_route({"admin"}, payload={"reason": "legal hold"}),
    ("POST", "/v1/requests/{id}/retry"): token_route({"admin"}, payload={"system": "appdb"}),
    ("POST", "/v1/requests/{id}/lifting"): token_route({"admin"}, payload={"reason": "verified"}),
    # No manual_task system is configured here: the owner's admin passes the checks and finds no such task.
    ("POST", "/v1/requests/{id}/tasks/{system}/confirmation"): token_route({"admin"}, reachable=False, payload={}),
    ("POST", "/v1/disputes"): token_route({"admin"}, scoped=False, payload=dispute_body()),
    ("GET", "/v1/disputes/{id}"): token_route(READERS),
    ("POST", "/v1/disputes/{id}/resolution"): token_route(
        {"admin"}, payload={"outcome": "company_prevails", "reason": "accurate"}),
    ("GET", "/v1/tasks"): token_route(READERS, scoped=False),
    ("GET", "/v1/exports/{id}"): Entry(access="signed"),
    ("POST", "/v1/callbacks/opendsr/{request_id}/{system}"): Entry(access="signed", payload={}),
    ("POST", "/v1/callbacks/webhook/{request_id}/{system}"): Entry(access="signed", payload={}),
    # Temporal's remote codec (api/codec_endpoint.py): payloads are opened per tenant, not refused per tenant.
    ("POST", "/codec/encode"): token_route({"admin", "privacy_officer"}, scoped=False, payload={"payloads": []}),
    ("POST", "/codec/decode"): token_route({"admin", "privacy_officer"}, scoped=False, payload={"payloads": []}),
    ("OPTIONS", "/codec/encode"): Entry(access="preflight"),
    ("OPTIONS", "/codec/decode"): Entry(access="preflight"),
}

TOKEN_ROUTES = [r for r, e in MATRIX.items() if e.access == "token"]
OTHER_ROUTES = [r for r, e in MATRIX.items() if e.access != "token"]


def registered_routes(settings: Settings, client: Any) -> set[tuple[str, str]]:
    """Every (method, path template) of the application's router but HEAD and the console's."""
    app = create_app(settings, client)
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        and not route.resource.canonical.startswith(EXEMPT_PREFIXES)
    }


def test_every_route_has_a_matrix_entry(idle_settings, temporal_env):
    registered = registered_routes(idle_settings, temporal_env.client)
    missing = registered - set(MATRIX)
    assert not missing, f"routes without a permission matrix entry: {sorted(missing)}"
    assert set(MATRIX) <= registered, f"matrix entries without a route: {sorted(set(MATRIX) - registered)}"


@pytest.fixture(scope="module")
async def matrix_settings(live_settings: Settings, pg) -> Settings:
    """The live settings, with an orchestrator database (so that the audit route reaches its tenant check)."""
    return live_settings.model_copy(update={"database_url": await fresh_database(pg, "perm")})


@pytest.fixture
async def api(matrix_settings, temporal_env, monkeypatch) -> AsyncIterator[TestClient]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    async with api_client(matrix_settings, temporal_env.client) as tc:
        yield tc


async def _path(api: TestClient, template: str) -> str:
    """``template`` with a fresh resource of the owner's tenant (a request waiting for approval, or a dispute)."""
    if "{id}" not in template:
        return template
    if template.startswith("/v1/disputes/"):
        resp = await api.post("/v1/disputes", json=dispute_body(), headers={**auth(f"admin-{OWNER}"),
                                                                             "Idempotency-Key": key()})
    else:
        resp = await api.post("/v1/requests", json=body(kind="erasure"), headers=auth(f"portal-{OWNER}"))
    assert resp.status == 201, await resp.text()
    resource_id = (await resp.json())["id"]
    return template.replace("{id}", resource_id).replace("{system}", "appdb")


def expectation(entry: Entry, token: str) -> int | Literal["allowed"]:
    role, tenant = ALL_TOKENS[token]
    if role not in entry.roles:
        return 403
    if entry.scoped and tenant is not None and tenant != OWNER:
        return 404
    return "allowed"


@pytest.mark.parametrize("token", sorted(ALL_TOKENS))
@pytest.mark.parametrize("route", TOKEN_ROUTES, ids=[f"{m} {p}" for m, p in TOKEN_ROUTES])
async def test_role_and_tenant(api, route, token):
    method, template = route
    entry = MATRIX[route]
    path = await _path(api, template)
    headers = {**auth(token), "Idempotency-Key": key()}
    resp = await api.request(method, path, json=entry.payload, headers=headers)
    text = await resp.text()
    expected = expectation(entry, token)
    if expected == "allowed":
        assert resp.status not in (401, 403), text
        if entry.reachable:
            assert resp.status != 404, text
        assert resp.status < 500 or resp.status == 503, text
    else:
        assert resp.status == expected, text
        assert resp.content_type == "application/problem+json"


BAD_AUTHORIZATION = [None, "Bearer not-a-configured-token", "Basic dXNlcjpwYXNz", "Bearer",
                     "Bearer eyJhbGciOiJub25lIn0.eyJyb2xlIjoiYWRtaW4ifQ."]


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION, ids=["none", "unknown", "basic", "empty", "jwt"])
@pytest.mark.parametrize("route", TOKEN_ROUTES, ids=[f"{m} {p}" for m, p in TOKEN_ROUTES])
async def test_no_or_a_bad_token_is_401(idle_api, route, authorization):
    method, template = route
    path = template.replace("{id}", REQ).replace("{system}", "appdb")
    headers = {"Authorization": authorization} if authorization else {}
    resp = await idle_api.request(method, path, json=MATRIX[route].payload, headers=headers)
    assert resp.status == 401, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="dsr"')


@pytest.mark.parametrize("route", OTHER_ROUTES, ids=[f"{m} {p}" for m, p in OTHER_ROUTES])
async def test_signed_and_public_routes_ignore_bearer_tokens(idle_api, route):
    method, template = route
    entry = MATRIX[route]
    path = template.replace("{id}", REQ).replace("{request_id}", REQ).replace("{system}", "appdb")
    kwargs: dict[str, Any] = {"json": entry.payload} if entry.payload is not None else {}
    anonymous = await idle_api.request(method, path, **kwargs)
    assert anonymous.status != 401, await anonymous.text()
    if entry.access == "public":
        assert anonymous.status == 200
    for token in ("admin-acme", "officer"):
        with_token = await idle_api.request(method, path, headers=auth(token), **kwargs)
        assert with_token.status == anonymous.status  # a token grants nothing a signature does not


def test_tokens_are_configured_by_hash_only(idle_settings):
    for token in idle_settings.api.tokens:
        assert len(token.sha256) == 64 and "tok-" not in token.sha256
        assert token.sha256 == hashlib.sha256(f"tok-{token.name}-7c1f0e9a".encode()).hexdigest()
