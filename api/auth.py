"""Bearer-token authentication: tokens come from configuration as SHA-256 hashes, each with a role and a tenant.

The presented token is hashed and compared with every configured hash in
constant time (``hmac.compare_digest``), so neither the token nor which entry
it almost matched leaks through timing. The matching entry becomes the
request's :class:`Principal`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from api.problems import Problem
from workers.config import ApiToken

Role = Literal["portal", "admin"]

REALM = "dsr"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
SIGNED_PREFIXES = ("/v1/exports/", "/v1/callbacks/")
"""Paths authorised by their own signature instead of a bearer token (api/exports.py, api/callbacks.py)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the configured token's name, role and tenant."""

    name: str
    role: Role
    tenant: str


PRINCIPAL = web.RequestKey("principal", Principal)


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


def auth_middleware(tokens: TokenTable, public_paths: Collection[str] = PUBLIC_PATHS) -> Middleware:
    """A middleware that authenticates every request but those to ``public_paths``.

    Args:
        tokens: The configured tokens.
        public_paths: Paths served without a token (the health probes).

    Returns:
        The middleware; it attaches the :class:`Principal` to the request under :data:`PRINCIPAL`.
    """

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public_paths or request.path.startswith(SIGNED_PREFIXES):
            return await handler(request)
        principal = tokens.authenticate(bearer_token(request))
        if principal is None:
            raise _unauthorized("the bearer token is not valid", error="invalid_token")
        request[PRINCIPAL] = principal
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
