"""OpenID Connect bearer tokens: JWTs from the identity provider, verified against its JWKS.

:class:`OidcVerifier` checks a token the way RFC 8725 (JWT best current practices) asks:

- the header's ``alg`` must be one of the configured asymmetric algorithms (RS256, ES256): ``none``
  and every HMAC algorithm are refused before any key is looked at, so a public key can never be
  used as an HMAC secret;
- the key is the JWKS entry named by the header's ``kid``, and its type must fit ``alg``;
- signature, ``exp``, ``nbf``, ``iat`` (with the configured leeway), ``iss`` and ``aud`` are checked by PyJWT;
  ``exp``, ``iat``, ``iss`` and ``aud`` are required.

The JWKS is fetched with aiohttp (with a timeout), cached for ``jwks_cache_seconds``, and fetched
again when a token names an unknown ``kid`` (the provider rotated its keys), at most once per
``jwks_min_refetch_seconds`` so that tokens with made-up ``kid`` values cannot make us hammer the provider.

The claims give the role (``role_claim``) and the tenant (``tenant_claim``); the caller's name for
audit records comes from ``actor_claim`` (``sub``), replaced by a digest when it looks like it could
be personal data (an email address) or does not fit an actor's name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any, get_args

import aiohttp
import jwt
from jwt.exceptions import InvalidTokenError, PyJWKError

from workers.config import TENANT_BOUND_ROLES, OidcSettings, Role

ROLES: frozenset[str] = frozenset(get_args(Role))
_SAFE_ACTOR = re.compile(r"^[A-Za-z0-9_.:-]{1,150}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class TokenRejected(Exception):
    """The token is not acceptable. The message says why in general terms and never quotes the token."""


class JwksUnavailable(Exception):
    """The provider's keys cannot be fetched now (network, timeout, not a JWKS)."""


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has a JWS compact form whose header is a JSON object with an ``alg``."""
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts[:2]):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and "alg" in header


class VerifiedClaims:
    """What a verified token says about its caller.

    Attributes:
        name: The caller's name for audit records (``oidc:`` and the actor claim, or a digest of it).
        role: The caller's role.
        tenant: The caller's tenant; None for a privacy officer or auditor of all tenants.
        claims: All the token's claims (for a console that wants more, e.g. a display name).
    """

    __slots__ = ("claims", "name", "role", "tenant")

    def __init__(self, name: str, role: Role, tenant: str | None, claims: Mapping[str, Any]) -> None:
        self.name = name
        self.role = role
        self.tenant = tenant
        self.claims = dict(claims)


class OidcVerifier:
    """Verifies the identity provider's JWTs (see the module docstring); one per application.

    Args:
        settings: The ``[api.oidc]`` settings.
        session: An aiohttp session to fetch the JWKS with; one is created (and closed by :meth:`close`) if None.
    """

    def __init__(self, settings: OidcSettings, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self._session = session
        self._own_session = session is None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the session this verifier created."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, token: str) -> VerifiedClaims:
        """The caller of ``token``.

        Raises:
            TokenRejected: The token is malformed, badly signed, expired, not yet valid, for another
                issuer or audience, signed with a refused algorithm or an unknown key, or names no usable
                role and tenant.
            JwksUnavailable: The keys could not be fetched.
        """
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            raise TokenRejected("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise TokenRejected("the token's signing algorithm is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("the token names no signing key (kid)")
        key = await self._key(kid)
        if key.algorithm_name != alg:  # e.g. an EC key for an RS256 header, or a P-384 key for ES256
            raise TokenRejected("the token's key does not fit its algorithm")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("the token's signature is not valid") from None
        except InvalidTokenError:
            raise TokenRejected("the token is not valid") from None
        return self._caller(claims)

    def _caller(self, claims: Mapping[str, Any]) -> VerifiedClaims:
        role = claims.get(self.settings.role_claim)
        if isinstance(role, list):
            known = [r for r in role if isinstance(r, str) and r in ROLES]
            role = known[0] if len(known) == 1 else None
        if not isinstance(role, str) or role not in ROLES:
            raise TokenRejected("the token names no role of this API")
        tenant = claims.get(self.settings.tenant_claim)
        if tenant is not None and (not isinstance(tenant, str) or not _TENANT.fullmatch(tenant)):
            raise TokenRejected("the token's tenant claim is not a tenant name")
        if role in TENANT_BOUND_ROLES and tenant is None:
            raise TokenRejected(f"a token with role {role} must name its tenant")
        return VerifiedClaims(_actor(claims.get(self.settings.actor_claim)), role, tenant, claims)

    def _age(self) -> float | None:
        return None if self._fetched_at is None else time.monotonic() - self._fetched_at

    async def _key(self, kid: str) -> jwt.PyJWK:
        age = self._age()
        if age is not None and age < self.settings.jwks_cache_seconds and kid in self._keys:
            return self._keys[kid]
        async with self._lock:  # one fetch at a time; callers waiting meanwhile use its result
            age = self._age()
            stale = age is None or age >= self.settings.jwks_cache_seconds
            rotated = kid not in self._keys and age is not None and age >= self.settings.jwks_min_refetch_seconds
            if stale or rotated:
                try:
                    await self._fetch()
                except JwksUnavailable:
                    if kid not in self._keys:  # keys we had keep working while the provider is away
                        raise
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected("the token's signing key is not one of the provider's")
        return key

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self.settings.jwks_timeout_seconds)
        try:
            async with self._session.get(self.settings.jwks_url, timeout=timeout,
                                         headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise JwksUnavailable(f"the JWKS answered HTTP {resp.status}")
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JwksUnavailable(f"the JWKS could not be fetched ({type(exc).__name__})") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise JwksUnavailable("the JWKS document has no keys")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC"):
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
            except (PyJWKError, InvalidTokenError, ValueError, TypeError):
                continue  # a key we cannot use (unknown curve, ...): tokens signed with it are refused
        self._keys = keys
        self._fetched_at = time.monotonic()


def _actor(value: Any) -> str:
    """``oidc:<value>`` when it is a plain identifier, else ``oidc:`` and a digest (no email in the audit trail)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if _SAFE_ACTOR.fullmatch(text):
        return f"oidc:{text}"
    return "oidc:" + hashlib.sha256(text.encode()).hexdigest()[:24]
