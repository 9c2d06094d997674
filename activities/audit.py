"""The evidence trail: an append-only, hash-chained audit table (``dsr_audit``).

Each tenant's records form one chain. A record's ``seq`` is its position in its tenant's chain (1, 2, ...),
``prev_hash`` is the hash of the record before it (64 zeros for the first), and ``hash`` is the SHA-256 of
``prev_hash`` and the record's canonical JSON (request id, tenant, seq, event, system, outcome, actor,
detail, time). Appending takes a per-tenant advisory lock, so records of one tenant are chained in the
order they were written, even from many workers at once.

Tampering shows up in :func:`verify_chain`:

- a changed field changes the record's hash (``altered``);
- a removed record leaves a gap in ``seq`` (``removed``);
- records moved around break ``prev_hash`` or the order of ids (``reordered``).

A trigger refuses ``UPDATE`` and ``DELETE`` on the table, so the application itself can only append; the
chain is what catches someone who goes around the trigger (a superuser, a restored dump). Removing the
newest records of a chain leaves a shorter chain that still verifies: anchor the head hash that
``dsr audit verify`` prints somewhere outside the database (a ticket, a signed e-mail) to catch that too.

No personal data is stored here: references, counts, outcomes and actors' configured names only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from workflows.tasks import AuditEvent

GENESIS = "0" * 64
"""The ``prev_hash`` of a tenant's first record."""

_CHAIN_LOCK_SPACE = 7_341_003

CHAIN_SCHEMA = """
ALTER TABLE dsr_audit ADD COLUMN IF NOT EXISTS seq BIGINT;
ALTER TABLE dsr_audit ADD COLUMN IF NOT EXISTS prev_hash TEXT;
ALTER TABLE dsr_audit ADD COLUMN IF NOT EXISTS hash TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS dsr_audit_chain ON dsr_audit (tenant, seq);

CREATE OR REPLACE FUNCTION dsr_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dsr_audit is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS dsr_audit_append_only ON dsr_audit;
CREATE TRIGGER dsr_audit_append_only BEFORE UPDATE OR DELETE ON dsr_audit
    FOR EACH ROW EXECUTE FUNCTION dsr_audit_append_only();
"""
"""Added to ``activities.db.SCHEMA``'s table: run after it, under the same migration lock."""


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: its chained fields as sorted, compact JSON.

    Args:
        record: ``request_id``, ``tenant``, ``seq``, ``event``, ``system``, ``outcome``, ``actor``, ``detail``
            (JSON-native values) and ``at`` (an aware datetime).
    """
    at: datetime = record["at"]
    body = {
        "request_id": record["request_id"],
        "tenant": record["tenant"],
        "seq": int(record["seq"]),
        "event": record["event"],
        "system": record["system"],
        "outcome": record["outcome"],
        "actor": record["actor"],
        "detail": record["detail"],
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """The hash of ``record`` chained to ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(record)).hexdigest()


def _lock_key(tenant: str) -> int:
    """A signed 64-bit advisory-lock key for the tenant's chain."""
    digest = hashlib.sha256(f"{_CHAIN_LOCK_SPACE}:{tenant}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _append(conn: asyncpg.Connection, fields: dict[str, Any], dedup_key: str) -> None:
    """Chain and insert one record; the caller holds a transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(fields["tenant"]))
    if await conn.fetchval("SELECT 1 FROM dsr_audit WHERE dedup_key = $1", dedup_key):
        return
    head = await conn.fetchrow(
        "SELECT seq, hash FROM dsr_audit WHERE tenant = $1 AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
        fields["tenant"],
    )
    seq = 1 if head is None else head["seq"] + 1
    prev = GENESIS if head is None else head["hash"]
    record = {**fields, "seq": seq}
    await conn.execute(
        """INSERT INTO dsr_audit (request_id, tenant, event, system, outcome, actor, detail, at, dedup_key,
                                  seq, prev_hash, hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
        record["request_id"], record["tenant"], record["event"], record["system"], record["outcome"],
        record["actor"], record["detail"], record["at"], dedup_key, seq, prev, chain_hash(prev, record),
    )


async def append_event(pool: asyncpg.Pool, event: AuditEvent, *, dedup_key: str | None = None) -> None:
    """Append one audit record to its tenant's chain; a retried activity writes it once.

    The dedup key is the request, event, system and time (workflow time: the same in a retry), unless the
    caller names one (an activity whose record carries its own, real time) or the event carries one (a
    workflow's local activity, whose workflow time changes when its workflow task is retried).
    """
    dedup = (dedup_key or event.dedup_key
             or f"{event.request_id}|{event.event}|{event.system or ''}|{event.at.isoformat()}")
    fields = {
        "request_id": event.request_id,
        "tenant": event.tenant,
        "event": event.event,
        "system": event.system,
        "outcome": event.outcome,
        "actor": event.actor,
        # What JSONB gives back, so that the hash recomputed from the stored row is the same.
        "detail": json.loads(json.dumps(event.detail)),
        "at": event.at.astimezone(UTC),
    }
    async with pool.acquire() as conn, conn.transaction():
        await _append(conn, fields, dedup)


async def chain_unchained(conn: asyncpg.Connection) -> int:
    """Chain records written before the chain existed, in id order; returns how many (run while migrating)."""
    rows = await conn.fetch(
        """SELECT id, request_id, tenant, event, system, outcome, actor, detail, at FROM dsr_audit
           WHERE seq IS NULL ORDER BY id"""
    )
    if not rows:
        return 0
    await conn.execute("ALTER TABLE dsr_audit DISABLE TRIGGER dsr_audit_append_only")
    try:
        for row in rows:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(row["tenant"]))
            head = await conn.fetchrow(
                "SELECT seq, hash FROM dsr_audit WHERE tenant = $1 AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
                row["tenant"],
            )
            seq = 1 if head is None else head["seq"] + 1
            prev = GENESIS if head is None else head["hash"]
            await conn.execute(
                "UPDATE dsr_audit SET seq = $2, prev_hash = $3, hash = $4 WHERE id = $1",
                row["id"], seq, prev, chain_hash(prev, {**dict(row), "seq": seq}),
            )
    finally:
        await conn.execute("ALTER TABLE dsr_audit ENABLE TRIGGER dsr_audit_append_only")
    return len(rows)


Problem = Literal["altered", "removed", "reordered", "unchained"]


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first record of a tenant's chain that does not verify."""

    tenant: str
    problem: Problem
    record_id: int | None
    """The record where the chain breaks (``id`` column)."""
    seq: int | None
    detail: str

    def line(self) -> str:
        """One line for the operator."""
        where = f"record id {self.record_id}" if self.record_id is not None else "a record"
        return f"tenant {self.tenant}: {where} (seq {self.seq}) {self.problem}: {self.detail}"


@dataclass(slots=True)
class ChainReport:
    """What :func:`verify_chain` found, per tenant."""

    records: dict[str, int] = field(default_factory=dict)
    """Records verified per tenant."""
    heads: dict[str, str] = field(default_factory=dict)
    """The newest hash per tenant: anchor it outside the database."""
    breaks: list[ChainBreak] = field(default_factory=list)
    """The first break of each tenant whose chain does not verify."""

    @property
    def ok(self) -> bool:
        """Whether every chain verified."""
        return not self.breaks


def _check_tenant(tenant: str, rows: list[asyncpg.Record]) -> tuple[int, str, ChainBreak | None]:
    """Walk one tenant's records in chain order; the count verified, the head hash and the first break."""
    prev_hash, prev_id, expected_seq = GENESIS, None, 1
    for count, row in enumerate(rows):
        rid, seq = row["id"], row["seq"]
        if seq is None:
            return count, prev_hash, ChainBreak(tenant, "unchained", rid, None, "the record has no chain position")
        if seq != expected_seq:
            if seq > expected_seq:
                missing = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seq {expected_seq}..{seq - 1}"
                detail = f"{missing} missing before it (removed)"
                return count, prev_hash, ChainBreak(tenant, "removed", rid, seq, detail)
            return count, prev_hash, ChainBreak(tenant, "reordered", rid, seq, f"expected seq {expected_seq}")
        if prev_id is not None and rid < prev_id:
            detail = f"its id comes before the previous record's ({prev_id}): rows were swapped"
            return count, prev_hash, ChainBreak(tenant, "reordered", rid, seq, detail)
        if row["prev_hash"] != prev_hash:
            detail = "it does not point at the record before it: rows were moved or replaced"
            return count, prev_hash, ChainBreak(tenant, "reordered", rid, seq, detail)
        if chain_hash(prev_hash, row) != row["hash"]:
            detail = "its content does not match its hash: a field was changed"
            return count, prev_hash, ChainBreak(tenant, "altered", rid, seq, detail)
        prev_hash, prev_id, expected_seq = row["hash"], rid, seq + 1
    return len(rows), prev_hash, None


async def verify_chain(conn: asyncpg.Connection, tenant: str | None = None) -> ChainReport:
    """Recompute every tenant's chain (or one tenant's) and name the first record that breaks it.

    Args:
        conn: A connection to the orchestrator database (JSONB decoded to Python, as
            ``activities.db.create_pool`` sets up; a plain connection is set up here if not).
        tenant: Only this tenant's chain.

    Returns:
        Per tenant the records verified and the head hash, and the first break of each broken chain.
    """
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    query = """SELECT id, request_id, tenant, seq, event, system, outcome, actor, detail, at, prev_hash, hash
               FROM dsr_audit {where} ORDER BY tenant, seq NULLS LAST, id"""
    rows = await (
        conn.fetch(query.format(where="WHERE tenant = $1"), tenant) if tenant else conn.fetch(query.format(where=""))
    )
    by_tenant: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_tenant.setdefault(row["tenant"], []).append(row)
    report = ChainReport()
    for name, records in by_tenant.items():
        count, head, broken = _check_tenant(name, records)
        report.records[name] = count
        report.heads[name] = head
        if broken is not None:
            report.breaks.append(broken)
    return report
