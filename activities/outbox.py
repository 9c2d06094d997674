"""The notification outbox: what was sent to whom, without the personal data.

One row per notification (``dedup_key`` is unique). A row holds the request,
tenant, kind of message and recipient role, a keyed hash of the address (so that
an operator holding an address can check whether it was written to, while the
table alone reveals nothing), the Message-ID, the status and the error type.
It never holds the address, the subject line or the body.

Statuses: ``pending`` (written before the message is handed to the mail server),
``sent``, ``skipped`` (no address for the recipient, or notifications disabled)
and ``failed`` (the server refused the message for good). A ``pending`` row left
by a crash between sending and recording is re-sent by the retry: delivery is
at least once, and the retry reuses the same Message-ID so that mail systems can
drop the duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Literal

import asyncpg

from workers.codec import load_keys
from workers.config import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_outbox (
    id             BIGSERIAL PRIMARY KEY,
    request_id     TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    kind           TEXT NOT NULL,
    recipient_role TEXT NOT NULL,
    recipient_hash TEXT,
    message_id     TEXT NOT NULL,
    dedup_key      TEXT NOT NULL UNIQUE,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'skipped', 'failed')),
    error_type     TEXT,
    attempts       INTEGER NOT NULL DEFAULT 1,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at        TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS dsr_outbox_request ON dsr_outbox (request_id, id);
"""

_MIGRATION_LOCK = 7_341_003

Status = Literal["pending", "sent", "skipped", "failed"]


async def migrate(pool: asyncpg.Pool) -> None:
    """Create the outbox table if it is missing (idempotent, serialised by an advisory lock)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(SCHEMA)


def outbox_key(settings: Settings) -> bytes:
    """The key of recipient hashes and Message-IDs.

    The environment variable named by ``notify.hash_key_env`` when set, else a key derived from the current
    codec key (rotating the codec key then changes the hashes of later rows, not of recorded ones).

    Raises:
        workers.codec.CodecKeyError: Neither the variable nor a codec key is available.
    """
    explicit = os.environ.get(settings.notify.hash_key_env)
    if explicit:
        return hashlib.sha256(b"dsr-notify-key:" + explicit.encode()).digest()
    codec_key = load_keys(settings.codec.key_env, settings.codec_key_file)[0]
    return hmac.new(codec_key, b"dsr-notify/outbox/v1", hashlib.sha256).digest()


def recipient_hash(key: bytes, address: str) -> str:
    """HMAC-SHA256 of the lower-cased, trimmed address, hex."""
    return hmac.new(key, b"recipient\0" + address.strip().lower().encode(), hashlib.sha256).hexdigest()


def message_id_for(key: bytes, dedup_key: str) -> str:
    """The Message-ID header of a notification: the same for every attempt, opaque."""
    digest = hmac.new(key, b"message-id\0" + dedup_key.encode(), hashlib.sha256).hexdigest()[:40]
    return f"<{digest}@dsr>"


@dataclass(frozen=True)
class OutboxRow:
    """The part of an outbox row the notifier acts on."""

    id: int
    status: Status


async def claim(
    pool: asyncpg.Pool,
    *,
    dedup_key: str,
    request_id: str,
    tenant: str,
    kind: str,
    recipient_role: str,
    recipient_hash: str | None,
    message_id: str,
    status: Literal["pending", "skipped"],
    error_type: str | None = None,
) -> OutboxRow:
    """Write the row for an attempt, or find the one a previous attempt wrote.

    A row already ``sent`` is returned unchanged (the caller must not send again); any other row is reset to
    ``status`` for this attempt, and its attempt counter incremented.
    """
    row = await pool.fetchrow(
        """INSERT INTO dsr_outbox (request_id, tenant, kind, recipient_role, recipient_hash, message_id,
                                   dedup_key, status, error_type)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (dedup_key) DO UPDATE SET
               status = EXCLUDED.status,
               recipient_hash = EXCLUDED.recipient_hash,
               error_type = EXCLUDED.error_type,
               attempts = dsr_outbox.attempts + 1
           WHERE dsr_outbox.status <> 'sent'
           RETURNING id, status""",
        request_id, tenant, kind, recipient_role, recipient_hash, message_id, dedup_key, status, error_type,
    )
    if row is None:  # the conflict's WHERE excluded the update: it was sent already
        row = await pool.fetchrow("SELECT id, status FROM dsr_outbox WHERE dedup_key = $1", dedup_key)
        assert row is not None
    return OutboxRow(id=row["id"], status=row["status"])


async def mark(pool: asyncpg.Pool, outbox_id: int, status: Status, error_type: str | None = None) -> None:
    """Record the outcome of an attempt; ``sent`` also sets ``sent_at``."""
    await pool.execute(
        """UPDATE dsr_outbox SET status = $2, error_type = $3,
                  sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END
           WHERE id = $1""",
        outbox_id, status, error_type,
    )
