"""Per-request data keys, wrapped by a master key, and their destruction (crypto-shredding).

Every workflow id has a *key scope*: the part before the first ``/`` (``req_abc`` for the request
``req_abc`` and for its children ``req_abc/partner/crm``). The payload codec (``workers.codec``) seals a
scope's payloads with the scope's own AES-256 data key. Data keys live in the orchestrator's database
(``dsr_data_keys``), wrapped (AES-GCM) by a master key that a :class:`KeyProvider` holds: the local key
file or environment variable for one machine, a KMS for production (implement the three methods).

Destroying a scope's data key (:meth:`DataKeyStore.destroy`) makes everything ever sealed with it, the
Temporal history of that request included, undecryptable by anyone: the wrapped key is overwritten and
only the fact and the time of its destruction remain.

Rotating the master key: put the new key first (``DSR_CODEC_KEY=new,old`` or a new first line in the key
file); new data keys are wrapped with it, old ones still unwrap with the old key, and
:meth:`DataKeyStore.rewrap` (``dsr keys rewrap``) re-wraps them all so that the old key can be retired.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
CACHE_SECONDS = 30.0
"""How long a process trusts a data key it has read: a key destroyed elsewhere stops working here by then."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_data_keys (
    scope         TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL,
    master_key_id TEXT,
    wrapped       BYTEA,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    destroyed_at  TIMESTAMPTZ
);
"""

_SCHEMA_LOCK = 7_341_004


class DataKeyError(Exception):
    """A data key cannot be had or opened."""


class UnknownMasterKeyError(DataKeyError):
    """A data key was wrapped with a master key this process does not have."""


class KeyShreddedError(DataKeyError):
    """The scope's data key was destroyed: what it sealed cannot be decrypted any more."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"the data key of {scope} was destroyed (crypto-shredded)")
        self.scope = scope


def scope_of(workflow_id: str | None) -> str | None:
    """The key scope of a workflow id: the part before the first ``/``."""
    if not workflow_id:
        return None
    return workflow_id.split("/", 1)[0] or None


class KeyProvider(Protocol):
    """Holds the master key(s) that wrap data keys: a local key, or a KMS behind this interface."""

    @property
    def current_key_id(self) -> str:
        """The id of the key that wraps new data keys."""
        ...

    async def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap ``plaintext`` with the current master key; returns its key id and the wrapped bytes."""
        ...

    async def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap with the master key ``key_id``.

        Raises:
            UnknownMasterKeyError: No such master key here.
        """
        ...


class LocalKeyProvider:
    """Master keys held by this process (the codec keys: newest first)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        from workers.codec import key_id_of

        if not keys:
            raise ValueError("at least one master key is needed")
        self._keys = {key_id_of(k): AESGCM(k) for k in keys}
        self._current = key_id_of(keys[0])

    @property
    def current_key_id(self) -> str:
        """The first configured key's id."""
        return self._current

    async def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """AES-GCM with the current key; the nonce is prepended."""
        nonce = os.urandom(NONCE_BYTES)
        return self._current, nonce + self._keys[self._current].encrypt(nonce, plaintext, aad)

    async def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Open a key wrapped by :meth:`wrap` with any configured key."""
        aead = self._keys.get(key_id)
        if aead is None:
            raise UnknownMasterKeyError(f"data key wrapped with master key {key_id}, which is not configured")
        return aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)


@dataclass(frozen=True, slots=True)
class DataKey:
    """An unwrapped data key."""

    scope: str
    key_id: str
    aead: AESGCM


def _aad(scope: str, key_id: str) -> bytes:
    return f"dsr-data-key:{scope}:{key_id}".encode()


class DataKeyStore:
    """The data keys of every scope, in the orchestrator's database.

    Args:
        database_url: The orchestrator database (a pool is opened on first use, in the running event loop).
        provider: The master keys.
    """

    def __init__(self, database_url: str, provider: KeyProvider) -> None:
        self._url = database_url
        self.provider = provider
        self._pool: asyncpg.Pool | None = None
        self._pool_lock: asyncio.Lock | None = None
        self._cache: dict[str, tuple[float, DataKey]] = {}

    async def _db(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(self._url, min_size=0, max_size=4)
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                    await conn.execute(SCHEMA)
                self._pool = pool
        return self._pool

    async def close(self) -> None:
        """Close the pool, if one was opened."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _cached(self, scope: str) -> DataKey | None:
        hit = self._cache.get(scope)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        return None

    async def _unwrap_row(self, scope: str, row: asyncpg.Record) -> DataKey:
        if row["wrapped"] is None:
            self._cache.pop(scope, None)
            raise KeyShreddedError(scope)
        try:
            plain = await self.provider.unwrap(row["master_key_id"], bytes(row["wrapped"]), _aad(scope, row["key_id"]))
        except InvalidTag:
            raise DataKeyError(f"the data key of {scope} does not open with its master key") from None
        key = DataKey(scope=scope, key_id=row["key_id"], aead=AESGCM(plain))
        self._cache[scope] = (time.monotonic(), key)
        return key

    async def current(self, scope: str) -> DataKey:
        """The scope's data key, created on first use.

        Raises:
            KeyShreddedError: It was destroyed: nothing new may be sealed for this scope.
        """
        cached = self._cached(scope)
        if cached is not None:
            return cached
        pool = await self._db()
        row = await pool.fetchrow("SELECT key_id, master_key_id, wrapped FROM dsr_data_keys WHERE scope = $1", scope)
        if row is None:
            key_id = secrets.token_hex(8)
            plain = AESGCM.generate_key(bit_length=256)
            master_id, wrapped = await self.provider.wrap(plain, _aad(scope, key_id))
            await pool.execute(
                """INSERT INTO dsr_data_keys (scope, key_id, master_key_id, wrapped) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (scope) DO NOTHING""",
                scope, key_id, master_id, wrapped,
            )
            # Another process may have won the race: use whichever key is stored.
            row = await pool.fetchrow(
                "SELECT key_id, master_key_id, wrapped FROM dsr_data_keys WHERE scope = $1", scope
            )
        return await self._unwrap_row(scope, row)

    async def get(self, scope: str, key_id: str) -> DataKey:
        """The data key that sealed a payload.

        Raises:
            KeyShreddedError: It was destroyed.
            DataKeyError: No such key (another database, or a forged payload).
        """
        cached = self._cached(scope)
        if cached is not None and cached.key_id == key_id:
            return cached
        pool = await self._db()
        row = await pool.fetchrow(
            "SELECT key_id, master_key_id, wrapped, destroyed_at FROM dsr_data_keys WHERE scope = $1", scope
        )
        if row is None or row["key_id"] != key_id:
            raise DataKeyError(f"no data key {key_id} for {scope} in this database")
        return await self._unwrap_row(scope, row)

    async def destroy(self, scope: str) -> bool:
        """Destroy the scope's data key for good; True if there was one to destroy (idempotent)."""
        pool = await self._db()
        self._cache.pop(scope, None)
        done = await pool.fetchval(
            """UPDATE dsr_data_keys SET wrapped = NULL, master_key_id = NULL, destroyed_at = now()
               WHERE scope = $1 AND wrapped IS NOT NULL RETURNING scope""",
            scope,
        )
        if done is None:
            # Nothing sealed yet under this scope, or destroyed before: make sure it can never be created.
            await pool.execute(
                """INSERT INTO dsr_data_keys (scope, key_id, destroyed_at) VALUES ($1, 'none', now())
                   ON CONFLICT (scope) DO NOTHING""",
                scope,
            )
        return done is not None

    async def is_destroyed(self, scope: str) -> bool:
        """Whether the scope's data key was destroyed."""
        pool = await self._db()
        destroyed = await pool.fetchval("SELECT destroyed_at FROM dsr_data_keys WHERE scope = $1", scope)
        return destroyed is not None

    async def rewrap(self) -> int:
        """Wrap every live data key with the current master key; returns how many changed."""
        pool = await self._db()
        current = self.provider.current_key_id
        rows = await pool.fetch(
            """SELECT scope, key_id, master_key_id, wrapped FROM dsr_data_keys
               WHERE wrapped IS NOT NULL AND master_key_id IS DISTINCT FROM $1""",
            current,
        )
        for row in rows:
            aad = _aad(row["scope"], row["key_id"])
            plain = await self.provider.unwrap(row["master_key_id"], bytes(row["wrapped"]), aad)
            master_id, wrapped = await self.provider.wrap(plain, aad)
            await pool.execute(
                "UPDATE dsr_data_keys SET master_key_id = $2, wrapped = $3 WHERE scope = $1 AND wrapped IS NOT NULL",
                row["scope"], master_id, wrapped,
            )
        return len(rows)
