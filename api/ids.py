"""Opaque ids, keyed fingerprints and the statuses a workflow has before it ran.

Every id and hash here is either random or an HMAC keyed by the server secret (or a key derived
from it): none reveals an identity, and none can be computed for another tenant without the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from workflows.dispute import FOLLOW_UP_SUFFIX
from workflows.messages import DisputeStatus, DisputeStep
from workflows.models import RequestKind, RequestStatus, Step, SubjectIdentities, end_of_day, one_calendar_month_after

ID_BODY_CHARS = 26
REQUEST_PREFIX = "req_"
DISPUTE_PREFIX = "dsp_"
DISPUTE_ID_PATTERN = re.compile(rf"^{DISPUTE_PREFIX}[a-z2-7]{{{ID_BODY_CHARS}}}$")
# A dispute the subject won goes on as a request whose id is the dispute's and FOLLOW_UP_SUFFIX.
REQUEST_ID_PATTERN = re.compile(
    rf"^(?:{REQUEST_PREFIX}[a-z2-7]{{{ID_BODY_CHARS}}}|{DISPUTE_PREFIX}[a-z2-7]{{{ID_BODY_CHARS}}}{FOLLOW_UP_SUFFIX})$"
)
SUBJECT_KEY_CHARS = 32


@dataclass(frozen=True, slots=True)
class RequestSecrets:
    """Keys derived from the server secret, one per purpose, plus the server secret for subject keys.

    Deriving separate keys keeps the server secret out of the HMACs of ids, fingerprints and update
    ids. The subject key is the exception: its formula is fixed (see :func:`subject_key`) so that every
    component holding the server secret computes the same key for the same subject.
    """

    request_id: bytes
    fingerprint: bytes
    update_id: bytes
    dispute_id: bytes
    server_secret: bytes

    @classmethod
    def derive(cls, server_secret: bytes) -> RequestSecrets:
        """Derive the purpose keys from ``server_secret``."""

        def sub(label: str) -> bytes:
            return hmac.new(server_secret, f"dsr-api/{label}/v1".encode(), hashlib.sha256).digest()

        return cls(
            request_id=sub("request-id"),
            fingerprint=sub("identity-fingerprint"),
            update_id=sub("update-id"),
            dispute_id=sub("dispute-id"),
            server_secret=server_secret,
        )


def _b32(digest: bytes, chars: int = ID_BODY_CHARS) -> str:
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()[:chars]


def _mac(key: bytes, *parts: str) -> bytes:
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).digest()


def canonical_json(value: Any) -> str:
    """``value`` as compact JSON with sorted keys: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def new_request_id() -> str:
    """A fresh random request id: ``req_`` and 26 base32 characters (130 bits)."""
    return REQUEST_PREFIX + _b32(secrets.token_bytes(20))


def idempotent_request_id(keys: RequestSecrets, tenant: str, idempotency_key: str) -> str:
    """The request id for ``idempotency_key`` sent by ``tenant``: the same pair always gives the same id.

    It is an HMAC under the server secret, so it reveals nothing of the key and cannot be
    guessed for another tenant's key.
    """
    return REQUEST_PREFIX + _b32(_mac(keys.request_id, tenant, idempotency_key))


def new_dispute_id() -> str:
    """A fresh random dispute id: ``dsp_`` and 26 base32 characters."""
    return DISPUTE_PREFIX + _b32(secrets.token_bytes(20))


def idempotent_dispute_id(keys: RequestSecrets, tenant: str, idempotency_key: str) -> str:
    """The dispute id for ``idempotency_key`` sent by ``tenant`` (keyed apart from request ids)."""
    return DISPUTE_PREFIX + _b32(_mac(keys.dispute_id, tenant, idempotency_key))


def identity_fingerprint(keys: RequestSecrets, identities: SubjectIdentities) -> str:
    """An HMAC of the canonical identities: equal for equal identities, and no way back to them."""
    return hmac.new(keys.fingerprint, canonical_json(identities.as_dict()).encode(), hashlib.sha256).hexdigest()


def content_fingerprint(keys: RequestSecrets, content: BaseModel | dict[str, Any]) -> str:
    """An HMAC of anything else a replay must repeat (details, grounds, flags), as canonical JSON."""
    data = content.model_dump(mode="json") if isinstance(content, BaseModel) else content
    return hmac.new(keys.fingerprint, b"content\0" + canonical_json(data).encode(), hashlib.sha256).hexdigest()


def primary_identity(identities: SubjectIdentities) -> str:
    """The identity a subject key is computed from: the email (lower-cased), else ``user_id:<id>``."""
    normalised = identities.as_dict()
    if "email" in normalised:
        return normalised["email"]
    return "user_id:" + normalised["user_id"]


def subject_key(server_secret: bytes, tenant: str, identities: SubjectIdentities) -> str:
    """The opaque key of a subject within ``tenant``: the same subject, the same key, in every component.

    ``base32(HMAC-SHA256(server_secret, "subject\\0" + tenant + "\\0" + primary identity))``, lower case,
    without padding, first 32 characters (160 bits). It matches ``^[a-z2-7]{16,64}$``.
    """
    message = "subject\0" + tenant + "\0" + primary_identity(identities)
    return _b32(hmac.new(server_secret, message.encode(), hashlib.sha256).digest(), SUBJECT_KEY_CHARS)


def update_id(keys: RequestSecrets, update: str, workflow_id: str, payload: BaseModel) -> str:
    """A stable id for sending ``payload`` as update ``update`` to ``workflow_id``.

    The same content gives the same id, so that resending it is answered with the recorded
    outcome instead of being applied (or refused) a second time.
    """
    digest = _mac(keys.update_id, update, workflow_id, canonical_json(payload.model_dump(mode="json")))
    return f"{update}-{digest.hex()[:32]}"


def initial_status(request_id: str, tenant: str, kind: RequestKind, received_at: datetime) -> RequestStatus:
    """The status a request has before its workflow ran its first task (as the workflow's ``__init__`` sets it)."""
    return RequestStatus(
        id=request_id,
        tenant=tenant,
        kind=kind,
        step=Step.RECEIVED,
        received_at=received_at,
        due_at=end_of_day(one_calendar_month_after(received_at)),
    )


def initial_dispute_status(dispute_id: str, tenant: str, opened_at: datetime) -> DisputeStatus:
    """The status a dispute has before its workflow ran its first task."""
    return DisputeStatus(id=dispute_id, tenant=tenant, step=DisputeStep.RESTRICTING, opened_at=opened_at)
