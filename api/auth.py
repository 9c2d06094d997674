"""Bearer-token authentication: API keys configured as SHA-256 hashes, and OIDC JWTs verified against a JWKS.

An API key is hashed and compared with every configured hash in constant time
(``hmac.compare_digest``), so neither the token nor which entry it almost
matched leaks through timing. When ``[api.oidc]`` is configured, a token that
looks like a JWT is verified by :class:`api.oidc.OidcVerifier` instead. Either
way the caller becomes the request's :class:`Principal`: a name, a role, and a
tenant (None for a privacy officer or auditor of every tenant).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from api.oidc import JwksUnavailable, OidcVerifier, TokenRejected, looks_like_jwt
from api.problems import Problem
from workers.config import ApiToken, Role

__all__ = ["PRINCIPAL", "Authenticator", "Principal", "Role", "TokenTable", "auth_middleware", "principal_of",
           "require_role"]

REALM = "dsr"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})  # /metrics: README "Observability"
SIGNED_PREFIXES = ("/v1/exports/", "/v1/callbacks/")
"""Paths authorised by their own signature instead of a bearer token (api/exports.py, api/callbacks.py)."""
PREFLIGHT_PREFIXES = ("/codec/",)
"""Paths whose CORS preflight (``OPTIONS``) is answered without a token: browsers send none (api/codec_endpoint.py)."""
CONSOLE_PREFIX = "/admin"
"""The admin console (api/admin/): its pages check their own session cookie, not a bearer token."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name, role and tenant (None: every tenant, for a privacy officer or auditor)."""

    name: str
    role: Role
    tenant: str | None


PRINCIPAL = web.RequestKey("principal", Principal)
COOKIE_AUTH = web.AppKey("cookie_auth", object)
"""A callable (request -> Principal | None) that reads the admin console's session cookie (api/admin)."""
COOKIE_PREFIXES = ("/codec/",)
"""Paths where a signed-in console user's session cookie stands in for a bearer token: the codec endpoint,
so that the Temporal Web UI decodes payloads for an operator signed in to the console."""


class TokenTable:
    """The configured tokens, looked up by the SHA-256 of a presented token."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._entries = [
            (bytes.fromhex(t.sha256), Principal(name=t.name, role=t.role, tenant=t.tenant)) for t in tokens
        ]

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None when no configured hash matches."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for expected, principal in self._entries:
            # No early exit: every entry is compared whatever the outcome.
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        return found


class Authenticator:
    """Every way a caller can authenticate: configured API keys, and OIDC JWTs when a verifier is given.

    Args:
        tokens: The configured API keys.
        oidc: The identity provider's verifier, if ``[api.oidc]`` is configured.
    """

    def __init__(self, tokens: TokenTable, oidc: OidcVerifier | None = None) -> None:
        self.tokens = tokens
        self.oidc = oidc

    async def authenticate(self, token: str) -> Principal:
        """The caller presenting ``token``.

        Raises:
            Problem: 401 when the token is not valid; 503 when the identity provider's keys cannot be fetched.
        """
        if self.oidc is not None and looks_like_jwt(token):
            try:
                verified = await self.oidc.verify(token)
            except TokenRejected as exc:
                raise _unauthorized(str(exc), error="invalid_token") from None
            except JwksUnavailable:
                raise Problem(503, "the identity provider's keys cannot be fetched now; try again",
                              slug="jwks-unavailable", title="Identity provider unavailable",
                              headers={"Retry-After": "5"}) from None
            return Principal(name=verified.name, role=verified.role, tenant=verified.tenant)
        principal = self.tokens.authenticate(token)
        if principal is None:
            raise _unauthorized("the bearer token is not valid", error="invalid_token")
        return principal


def _unauthorized(detail: str, *, error: str | None) -> Problem:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return Problem(401, detail, slug="unauthorized", title="Unauthorized", headers={"WWW-Authenticate": challenge})


def bearer_token(request: web.Request) -> str:
    """The bearer token of ``request``.

    Raises:
        Problem: 401 when the Authorization header is missing, uses another scheme, or is malformed.
    """
    header = request.headers.get("Authorization")
    if not header:
        # RFC 6750 §3.1: no error code when the request carried no authentication.
        raise _unauthorized("a bearer token is required", error=None)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise _unauthorized("the Authorization header must be 'Bearer <token>'", error="invalid_request")
    return token


def auth_middleware(tokens: TokenTable | Authenticator, public_paths: Collection[str] = PUBLIC_PATHS) -> Middleware:
    """A middleware that authenticates every request but those to ``public_paths``.

    Args:
        tokens: The configured tokens, or an :class:`Authenticator` (API keys and OIDC).
        public_paths: Paths served without a token (the health probes).

    Returns:
        The middleware; it attaches the :class:`Principal` to the request under :data:`PRINCIPAL`.
    """
    authenticator = tokens if isinstance(tokens, Authenticator) else Authenticator(tokens)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public_paths or request.path.startswith(SIGNED_PREFIXES):
            return await handler(request)
        if request.method == "OPTIONS" and request.path.startswith(PREFLIGHT_PREFIXES):
            return await handler(request)
        if request.path == CONSOLE_PREFIX or request.path.startswith(CONSOLE_PREFIX + "/"):
            return await handler(request)
        cookie_auth = request.app.get(COOKIE_AUTH)
        if (cookie_auth is not None and "Authorization" not in request.headers
                and request.path.startswith(COOKIE_PREFIXES)):
            # The Temporal Web UI sends the console's session cookie ("include cross-origin credentials").
            principal = cookie_auth(request)
            if principal is not None:
                request[PRINCIPAL] = principal
                return await handler(request)
        request[PRINCIPAL] = await authenticator.authenticate(bearer_token(request))
        return await handler(request)

    return authenticate


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller of ``request`` (set by :func:`auth_middleware`)."""
    return request[PRINCIPAL]


def require_role(request: web.Request, *roles: Role) -> Principal:
    """The caller, if their role is one of ``roles``.

    Raises:
        Problem: 403 when the caller's role is not allowed here.
    """
    principal = principal_of(request)
    if principal.role not in roles:
        raise Problem(
            403,
            f"this operation needs the {' or '.join(roles)} role",
            slug="forbidden-role",
            title="Forbidden",
        )
    return principal
