"""The console's session: an HMAC-signed cookie, and CSRF tokens bound to it.

The cookie holds ``base64url(JSON) "." base64url(HMAC-SHA256)`` of the signed-in token's configured name,
role and tenant, a random session id and the expiry. Nothing else: no API key, no personal data. The MAC key
is derived from the server secret (:func:`api.app.server_secret`) and the MAC covers the token's configured
SHA-256 as well, so rotating a token's key or removing the token ends its sessions. A session opened through
the identity provider (:mod:`api.admin.oidc`) carries the ID token's actor name, role and tenant instead, and
its MAC covers the provider's issuer. Sign-out revokes the session id in this process at once, and in the other
API replicas through the orchestrator's database (:mod:`api.admin.revocations`); the cookie is removed from the
browser too.

Every form carries a CSRF token, the HMAC of the session id (of a short-lived sign-in nonce cookie before
sign-in), compared in constant time: a form posted from elsewhere, or without it, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from api.auth import Principal
from workers.config import ApiToken

SESSION_COOKIE = "dsr_admin_session"
LOGIN_COOKIE = "dsr_admin_login"
COOKIE_PATH = "/admin"
CODEC_COOKIE_PATH = "/codec"
CODEC_SESSION_COOKIE = "dsr_codec_session"
"""The session cookie is set for the codec endpoint too: the Temporal Web UI, told to include cross-origin
credentials, then decodes payloads as the signed-in user (api/auth.py COOKIE_AUTH)."""
SESSION_SECONDS = 8 * 3600
"""How long a sign-in lasts (a working day); then the console asks for the key again."""
LOGIN_NONCE_SECONDS = 3600
CSRF_FIELD = "csrf_token"
CONSOLE_ROLES = frozenset({"admin", "privacy_officer", "auditor"})
"""Roles that may sign in; what each may do is what the JSON API lets its role do (auditor: read only)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in console user.

    Attributes:
        principal: The configured token they signed in with (its name is the actor of their decisions).
        session_id: Random, per sign-in; keys the CSRF token and the revocation.
        expires_at: Unix time when the session ends.
    """

    principal: Principal
    session_id: str
    expires_at: int


def revocation_key(session_id: str) -> str:
    """What a revocation is kept under: the session id's SHA-256 (shared between replicas, never the id)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionKeys:
    """Signs and reads session cookies and CSRF tokens for one application.

    Args:
        server_secret: The application's server secret.
        tokens: The configured API tokens (sessions are only valid for a token still configured as it was).
        secure: Whether cookies get the ``Secure`` attribute (the public URL is https).
        oidc_issuer: The identity provider whose sign-ins are accepted (None: API keys only).
    """

    def __init__(self, server_secret: bytes, tokens: Sequence[ApiToken], *, secure: bool,
                 oidc_issuer: str | None = None) -> None:
        self._mac_key = hmac.new(server_secret, b"dsr-admin/session/v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(server_secret, b"dsr-admin/csrf/v1", hashlib.sha256).digest()
        self._flow_key = hmac.new(server_secret, b"dsr-admin/flow/v1", hashlib.sha256).digest()
        self._tokens = {t.name: t for t in tokens}
        self._oidc_issuer = oidc_issuer
        self._revoked: dict[str, int] = {}
        self.secure = secure

    # --- sessions -----------------------------------------------------------------------------

    def _mac(self, payload: bytes, binding: str) -> bytes:
        return hmac.new(self._mac_key, binding.encode() + b"\0" + payload, hashlib.sha256).digest()

    def _binding(self, via: object, name: str) -> str | None:
        """What a session's MAC is bound to: the API key's configured hash, or the identity provider."""
        if via == "key":
            token = self._tokens.get(name)
            return None if token is None else "key\0" + token.sha256
        if via == "oidc" and self._oidc_issuer is not None:
            return "oidc\0" + self._oidc_issuer
        return None

    def issue(self, principal: Principal, now: float | None = None, *,
              via: Literal["key", "oidc"] = "key") -> tuple[str, Session]:
        """A new session for ``principal``: the cookie value and the session.

        Args:
            principal: A configured token's principal (``via="key"``) or the identity provider's (``"oidc"``).
            now: The current Unix time (tests).
            via: How they signed in.
        """
        now = time.time() if now is None else now
        binding = self._binding(via, principal.name)
        if binding is None:
            raise ValueError("no session can be issued for this principal")
        session = Session(principal=principal, session_id=secrets.token_urlsafe(18),
                          expires_at=int(now) + SESSION_SECONDS)
        body = {"v": 1, "k": via, "n": principal.name, "r": principal.role, "t": principal.tenant,
                "s": session.session_id, "e": session.expires_at}
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload, binding))}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie value; None when absent, forged, expired, revoked or its token changed."""
        now = time.time() if now is None else now
        body = self._verified(cookie, lambda b: self._binding(b.get("k"), str(b.get("n"))))
        if body is None:
            return None
        expires_at, session_id = body.get("e"), body.get("s")
        if not isinstance(expires_at, int) or expires_at <= now or not isinstance(session_id, str):
            return None
        if revocation_key(session_id) in self._revoked:
            return None
        if body.get("k") == "key":
            token = self._tokens[str(body.get("n"))]
            if token.role != body.get("r") or token.tenant != body.get("t"):
                return None
            principal = Principal(name=token.name, role=token.role, tenant=token.tenant)
        else:
            role, tenant = body.get("r"), body.get("t")
            if role not in CONSOLE_ROLES or not (tenant is None or isinstance(tenant, str)):
                return None
            principal = Principal(name=str(body.get("n")), role=role, tenant=tenant)
        return Session(principal=principal, session_id=session_id, expires_at=expires_at)

    def _verified(self, cookie: str | None, binding: Callable[[dict[str, Any]], str | None]) -> dict[str, Any] | None:
        """The JSON body of a signed cookie value whose MAC (bound to ``binding(body)``) is right, else None."""
        if not cookie or cookie.count(".") != 1:
            return None
        encoded, mac = cookie.split(".")
        try:
            payload, presented = _unb64(encoded), _unb64(mac)
            body = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("v") != 1:
            return None
        bound = binding(body)
        if bound is None or not hmac.compare_digest(self._mac(payload, bound), presented):
            return None
        return body

    # --- short-lived signed state (the OIDC flow) ----------------------------------------------------

    def seal(self, purpose: str, data: dict[str, Any], max_age: int, now: float | None = None) -> str:
        """``data`` signed for ``purpose``, valid ``max_age`` seconds (a cookie value)."""
        now = time.time() if now is None else now
        body = {"v": 1, "p": purpose, "e": int(now) + max_age, "d": data}
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        mac = hmac.new(self._flow_key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def unseal(self, purpose: str, value: str | None, now: float | None = None) -> dict[str, Any] | None:
        """The data :meth:`seal` signed for ``purpose``; None when forged, for another purpose or expired."""
        now = time.time() if now is None else now
        if not value or value.count(".") != 1:
            return None
        encoded, mac = value.split(".")
        try:
            payload, presented = _unb64(encoded), _unb64(mac)
            body = json.loads(payload)
        except ValueError:
            return None
        if not hmac.compare_digest(hmac.new(self._flow_key, payload, hashlib.sha256).digest(), presented):
            return None
        if not isinstance(body, dict) or body.get("p") != purpose or not isinstance(body.get("e"), int):
            return None
        if body["e"] <= now or not isinstance(body.get("d"), dict):
            return None
        return body["d"]

    def revoke(self, session: Session, now: float | None = None) -> None:
        """End ``session`` in this process before its expiry (sign-out)."""
        self.merge_revoked({revocation_key(session.session_id): session.expires_at}, now)

    def merge_revoked(self, revoked: dict[str, int], now: float | None = None) -> None:
        """Add revocations (:func:`revocation_key` to expiry), e.g. those of other replicas; drop expired ones."""
        now = time.time() if now is None else now
        self._revoked = {key: exp for key, exp in self._revoked.items() if exp > now}
        self._revoked.update(revoked)

    # --- CSRF -----------------------------------------------------------------------------------

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token of forms posted within ``session_id`` (or a sign-in nonce)."""
        return _b64(hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).digest())

    def csrf_ok(self, session_id: str, presented: object) -> bool:
        """Whether ``presented`` is the CSRF token of ``session_id`` (constant-time comparison)."""
        if not isinstance(presented, str):
            return False
        return hmac.compare_digest(self.csrf_token(session_id).encode(), presented.encode("utf-8", "replace"))

    # --- cookies -----------------------------------------------------------------------------

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int, *,
                   path: str = COOKIE_PATH, samesite: str = "Strict") -> None:
        """Set a console cookie: HttpOnly, SameSite=Strict (unless told), path /admin, Secure behind https."""
        response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite=samesite,
                            secure=self.secure)

    def clear_cookie(self, response: web.StreamResponse, name: str, *, path: str = COOKIE_PATH,
                     samesite: str = "Strict") -> None:
        """Remove a console cookie from the browser."""
        response.del_cookie(name, path=path, secure=self.secure, httponly=True, samesite=samesite)
