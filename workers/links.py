"""Short-lived, signed download links for export bundles (never a public path).

The link carries the request id and an expiry, signed with HMAC-SHA256 under a key
derived from the API secret (``DSR_API_SECRET``) or, without it, the codec key. The
API checks the signature and the expiry before streaming the bundle.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import datetime
from urllib.parse import urlencode

from workers.codec import load_keys
from workers.config import Settings


def link_secret(settings: Settings) -> bytes:
    """The key that signs download links."""
    base = os.environ.get(settings.api.secret_env)
    material = base.encode() if base else load_keys(settings.codec.key_env, settings.codec_key_file)[0]
    return hmac.new(material, b"dsr-export-link", hashlib.sha256).digest()


def _signature(secret: bytes, request_id: str, expires: int) -> str:
    return hmac.new(secret, f"{request_id}\0{expires}".encode(), hashlib.sha256).hexdigest()


def sign_export_link(settings: Settings, request_id: str, expires_at: datetime) -> str:
    """The URL of ``request_id``'s bundle, valid until ``expires_at``."""
    expires = int(expires_at.timestamp())
    query = urlencode({"expires": expires, "signature": _signature(link_secret(settings), request_id, expires)})
    return f"{settings.api.public_url.rstrip('/')}/v1/exports/{request_id}?{query}"


def check_export_link(settings: Settings, request_id: str, expires: str, signature: str, now: datetime) -> str | None:
    """None when the link is valid now, else why not (one line, no secrets)."""
    # ASCII digits only (str.isdigit also takes "²", which int() refuses), and few enough for int().
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        return "malformed link"
    expected = _signature(link_secret(settings), request_id, int(expires))
    # compare_digest refuses str with non-ASCII characters; a signature is hex.
    if not signature.isascii() or not hmac.compare_digest(expected, signature):
        return "invalid signature"
    if now.timestamp() > int(expires):
        return "the link has expired"
    return None
