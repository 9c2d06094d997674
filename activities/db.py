"""The orchestrator's own tables: audit records (hash-chained, see activities.audit) and erasure plans.

No personal data is stored here in plain text: audit records hold references,
counts and outcomes; erasure plans hold row keys and already-masked values,
and are deleted once a request's erasure is verified.
"""

from __future__ import annotations

import json

import asyncpg

from activities.audit import CHAIN_SCHEMA, append_event, chain_unchained
from workflows.tasks import AuditEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_audit (
    id          BIGSERIAL PRIMARY KEY,
    request_id  TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    event       TEXT NOT NULL,
    system      TEXT,
    outcome     TEXT NOT NULL,
    actor       TEXT,
    detail      JSONB NOT NULL DEFAULT '{}',
    at          TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    dedup_key   TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS dsr_audit_request ON dsr_audit (request_id, id);

CREATE TABLE IF NOT EXISTS dsr_erasure_plan_state (
    request_id TEXT NOT NULL,
    system     TEXT NOT NULL,
    sealed     BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, system)
);

CREATE TABLE IF NOT EXISTS dsr_erasure_plan_item (
    id         BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    system     TEXT NOT NULL,
    item       JSONB NOT NULL,
    done       BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS dsr_erasure_plan_pending ON dsr_erasure_plan_item (request_id, system, done, id);
"""

_MIGRATION_LOCK = 7_341_002


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str) -> asyncpg.Pool:
    """A pool on the orchestrator database, with its tables created (idempotent, serialised by an advisory lock)."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=8, init=_init_connection)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(SCHEMA)
        await conn.execute(CHAIN_SCHEMA)
        await chain_unchained(conn)
    return pool


async def record_audit(pool: asyncpg.Pool, event: AuditEvent) -> None:
    """Append one audit record to its tenant's hash chain (``activities.audit``); a retry writes it once."""
    await append_event(pool, event)
