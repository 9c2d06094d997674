"""The erasure ledger: who was erased, as keyed hashes only, so that a restored backup can be erased again.

A backup cannot be edited; when one is restored, the subjects erased since it was taken come back. The ledger
remembers them without holding their identifiers: one row per (request, system, identity type) with the
HMAC-SHA256 of the normalised identifier (trimmed; emails lower-cased). ``dsr backups reapply`` hashes the
identifiers it finds in the restored database with the same key and erases the rows whose hashes are in the
ledger (see :mod:`workers.reapply`).

The key comes from ``DSR_LEDGER_KEY`` when set, else it is derived from the codec key. Each row names the key
it was written under (``key_id``, a fingerprint, not the key), and every codec key still configured is tried,
so rotating the codec key (new key first, old ones kept) does not orphan older entries; setting
``DSR_LEDGER_KEY`` once and keeping it is the robust choice. Losing every key makes the ledger useless.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime

import asyncpg
from pydantic import BaseModel

from workers.codec import CodecKeyError, load_keys
from workers.config import Settings

LEDGER_KEY_ENV = "DSR_LEDGER_KEY"

SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_erasure_ledger (
    id            BIGSERIAL PRIMARY KEY,
    request_id    TEXT NOT NULL,
    tenant        TEXT,
    system        TEXT NOT NULL,
    identity_type TEXT NOT NULL,
    identity_hmac TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (request_id, system, identity_type, identity_hmac)
);
CREATE INDEX IF NOT EXISTS dsr_erasure_ledger_hmac ON dsr_erasure_ledger (identity_type, identity_hmac);
"""

_MIGRATION_LOCK = 7_341_004


def normalise(identity_type: str, value: str) -> str:
    """The form that is hashed: trimmed, and lower-cased for emails (as the connectors compare them)."""
    value = value.strip()
    return value.lower() if identity_type == "email" else value


def identity_hmac(key: bytes, identity_type: str, value: str) -> str:
    """HMAC-SHA256 (hex) of the identity type and the normalised value."""
    message = f"{identity_type}\0{normalise(identity_type, value)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A fingerprint naming the key (reveals nothing about it)."""
    return hmac.new(key, b"dsr-erasure-ledger/key-id", hashlib.sha256).hexdigest()[:16]


def ledger_keys(settings: Settings) -> list[bytes]:
    """The ledger's keys, the one to write with first: ``DSR_LEDGER_KEY``'s, then one per codec key.

    Raises:
        workers.codec.CodecKeyError: Neither ``DSR_LEDGER_KEY`` nor a codec key is available.
    """
    keys: list[bytes] = []
    explicit = os.environ.get(LEDGER_KEY_ENV)
    if explicit:
        keys.append(hashlib.sha256(b"dsr-ledger-key:" + explicit.encode()).digest())
    try:
        codec = load_keys(settings.codec.key_env, settings.codec_key_file)
    except CodecKeyError:
        if not keys:
            raise
        codec = []
    keys += [hmac.new(k, b"dsr-erasure-ledger/v1", hashlib.sha256).digest() for k in codec]
    return keys


class LedgerEntry(BaseModel):
    """One ledger row: a hashed identity of an erased subject."""

    id: int
    request_id: str
    tenant: str | None
    system: str
    identity_type: str
    identity_hmac: str
    key_id: str
    recorded_at: datetime


class ErasureLedger:
    """The ledger in the orchestrator's database; the table is created on first use.

    Implements the ``erasure_ledger`` service that connectors receive through ``Connector.attach``.
    """

    def __init__(self, pool: asyncpg.Pool, keys: Sequence[bytes] | Callable[[], Sequence[bytes]]) -> None:
        """``keys``: the keys (writing with the first), or a function giving them on first use."""
        self._pool = pool
        self._keys_source = keys
        self._keys: list[bytes] | None = None
        self._migrated = False
        self._lock = asyncio.Lock()

    @classmethod
    def for_settings(cls, pool: asyncpg.Pool, settings: Settings) -> ErasureLedger:
        """The ledger with the configured keys, read on first use (see :func:`ledger_keys`)."""
        return cls(pool, lambda: ledger_keys(settings))

    @property
    def keys(self) -> list[bytes]:
        """The keys, the writing one first."""
        if self._keys is None:
            keys = self._keys_source() if callable(self._keys_source) else self._keys_source
            if not keys:
                raise ValueError("the erasure ledger needs at least one key")
            self._keys = list(keys)
        return self._keys

    def key_for(self, kid: str) -> bytes | None:
        """The key whose fingerprint is ``kid``, if it is still configured."""
        return next((k for k in self.keys if hmac.compare_digest(key_id(k), kid)), None)

    async def migrate(self) -> None:
        """Create the table if it is missing (idempotent, serialised by an advisory lock)."""
        async with self._lock:
            if self._migrated:
                return
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(SCHEMA)
            self._migrated = True

    async def record(self, request_id: str, system: str, identities: Mapping[str, str],
                     tenant: str | None = None) -> None:
        """Record the subject's erasure: one row per non-empty identity, hashed; recording twice adds nothing."""
        key = self.keys[0]
        rows = [(request_id, tenant, system, kind, identity_hmac(key, kind, value), key_id(key))
                for kind, value in sorted(identities.items()) if value and value.strip()]
        if not rows:
            return
        await self.migrate()
        await self._pool.executemany(
            """INSERT INTO dsr_erasure_ledger (request_id, tenant, system, identity_type, identity_hmac, key_id)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (request_id, system, identity_type, identity_hmac) DO NOTHING""",
            rows,
        )

    async def entries(self, system: str | None = None) -> AsyncIterator[LedgerEntry]:
        """Every entry (of ``system`` if named), oldest first (keyset pagination: memory stays flat)."""
        await self.migrate()
        last = 0
        while True:
            rows = await self._pool.fetch(
                """SELECT id, request_id, tenant, system, identity_type, identity_hmac, key_id, recorded_at
                   FROM dsr_erasure_ledger WHERE id > $1 AND ($2::text IS NULL OR system = $2)
                   ORDER BY id LIMIT 1000""",
                last, system,
            )
            if not rows:
                return
            last = rows[-1]["id"]
            for r in rows:
                yield LedgerEntry(**dict(r))
