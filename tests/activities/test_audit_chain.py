"""The hash-chained audit trail on a real PostgreSQL: appends chain, the table refuses edits, tampering is named.

The tampering tests go around the append-only trigger the way a database superuser could
(``session_replication_role = replica`` skips triggers) and then expect ``dsr audit verify`` to name the
record where the chain breaks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from activities.audit import GENESIS, verify_chain
from activities.db import create_pool, record_audit
from workers.cli import main
from workflows.tasks import AuditEvent

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def event(n: int, tenant: str = "acme", **extra) -> AuditEvent:
    return AuditEvent(request_id=f"req_{tenant}_{n % 3}", tenant=tenant, event=f"step-{n}", system="appdb",
                      outcome="ok", actor="admin-acme" if n % 2 else None,
                      detail={"rows": {"customer": n}, "ratio": 0.5, "note": "Tax law §257"},
                      at=T0 + timedelta(minutes=n), **extra)


async def seeded(url: str, n: int = 6) -> asyncpg.Pool:
    pool = await create_pool(url)
    for i in range(1, n + 1):
        await record_audit(pool, event(i))
        await record_audit(pool, event(i, tenant="globex"))
    return pool


async def ids(conn: asyncpg.Connection, tenant: str = "acme") -> list[int]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM dsr_audit WHERE tenant = $1 ORDER BY seq", tenant)]


async def run_verify(url: str, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``dsr audit verify`` as an operator runs it (in a thread: it runs its own event loop); status and output."""
    monkeypatch.setenv("DATABASE_URL", url)
    code = await asyncio.to_thread(main, ["audit", "verify"])
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_records_chain_per_tenant_and_verify(orchestrator_db):
    pool = await seeded(orchestrator_db)
    try:
        rows = await pool.fetch("SELECT seq, prev_hash, hash FROM dsr_audit WHERE tenant = 'acme' ORDER BY seq")
        assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
        assert rows[0]["prev_hash"] == GENESIS
        assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
        async with pool.acquire() as conn:
            report = await verify_chain(conn)
        assert report.ok, report.breaks
        assert report.records == {"acme": 6, "globex": 6}
        assert report.heads["acme"] == rows[-1]["hash"]
    finally:
        await pool.close()


async def test_a_retried_write_is_recorded_once(orchestrator_db):
    pool = await seeded(orchestrator_db, 2)
    try:
        await record_audit(pool, event(2))
        assert await pool.fetchval("SELECT count(*) FROM dsr_audit WHERE tenant = 'acme'") == 2
    finally:
        await pool.close()


async def test_concurrent_writers_keep_one_unbroken_chain(orchestrator_db):
    pool = await create_pool(orchestrator_db)
    try:
        await asyncio.gather(*(record_audit(pool, event(i)) for i in range(1, 41)))
        async with pool.acquire() as conn:
            report = await verify_chain(conn)
        assert report.ok and report.records == {"acme": 40}
    finally:
        await pool.close()


async def test_the_table_refuses_update_and_delete(orchestrator_db):
    pool = await seeded(orchestrator_db, 2)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute("UPDATE dsr_audit SET outcome = 'failed'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute("DELETE FROM dsr_audit")
        assert await pool.fetchval("SELECT count(*) FROM dsr_audit") == 4
    finally:
        await pool.close()


async def tamper(url: str, *statements: tuple[str, tuple]) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            for sql, params in statements:
                await conn.execute(sql, *params)
    finally:
        await conn.close()


async def test_verify_passes_on_an_untouched_trail(orchestrator_db, monkeypatch, capsys):
    (await seeded(orchestrator_db)).terminate()
    code, out = await run_verify(orchestrator_db, monkeypatch, capsys)
    assert code == 0, out
    assert "tenant acme: 6 records" in out and "tenant globex: 6 records" in out


async def test_an_altered_record_is_named(orchestrator_db, monkeypatch, capsys):
    pool = await seeded(orchestrator_db)
    acme = await ids(await pool.acquire())
    pool.terminate()
    await tamper(orchestrator_db, ("UPDATE dsr_audit SET outcome = 'ok', detail = $2 WHERE id = $1",
                                   (acme[3], json.dumps({"rows": {"customer": 0}}))))
    code, out = await run_verify(orchestrator_db, monkeypatch, capsys)
    assert code == 1
    assert f"FAILED  tenant acme: record id {acme[3]} (seq 4) altered" in out
    assert "ok      tenant globex: 6 records" in out


async def test_a_removed_record_is_named(orchestrator_db, monkeypatch, capsys):
    pool = await seeded(orchestrator_db)
    acme = await ids(await pool.acquire())
    pool.terminate()
    await tamper(orchestrator_db, ("DELETE FROM dsr_audit WHERE id = $1", (acme[2],)))
    code, out = await run_verify(orchestrator_db, monkeypatch, capsys)
    assert code == 1
    assert f"tenant acme: record id {acme[3]} (seq 4) removed: seq 3 missing" in out


async def test_swapped_records_are_named(orchestrator_db, monkeypatch, capsys):
    pool = await seeded(orchestrator_db)
    conn = await pool.acquire()
    acme = await ids(conn)
    pool.terminate()
    # Swap the positions of the 2nd and 5th records (their seq); ids and hashes stay where they were.
    await tamper(orchestrator_db,
                 ("UPDATE dsr_audit SET seq = -seq WHERE id = ANY($1::bigint[])", ([acme[1], acme[4]],)),
                 ("UPDATE dsr_audit SET seq = 5 WHERE id = $1", (acme[1],)),
                 ("UPDATE dsr_audit SET seq = 2 WHERE id = $1", (acme[4],)))
    code, out = await run_verify(orchestrator_db, monkeypatch, capsys)
    assert code == 1
    assert f"tenant acme: record id {acme[4]} (seq 2) reordered" in out


async def test_swapped_contents_are_named(orchestrator_db):
    """Two rows exchange everything but their ids: the order of ids betrays it."""
    pool = await seeded(orchestrator_db)
    conn = await pool.acquire()
    acme = await ids(conn)
    await pool.release(conn)
    cols = "request_id, tenant, event, system, outcome, actor, detail, at, dedup_key, seq, prev_hash, hash"
    a, b = acme[1], acme[2]
    await tamper(orchestrator_db,
                 (f"CREATE TEMP TABLE swap AS SELECT id, {cols} FROM dsr_audit WHERE id = ANY($1::bigint[])",
                  ([a, b],)),
                 ("UPDATE dsr_audit SET dedup_key = dedup_key || '-x', seq = -seq WHERE id = ANY($1::bigint[])",
                  ([a, b],)),
                 (f"UPDATE dsr_audit d SET ({cols}) = (SELECT {cols} FROM swap s WHERE s.id = $2) WHERE d.id = $1",
                  (a, b)),
                 (f"UPDATE dsr_audit d SET ({cols}) = (SELECT {cols} FROM swap s WHERE s.id = $2) WHERE d.id = $1",
                  (b, a)))
    async with pool.acquire() as conn:
        report = await verify_chain(conn)
    await pool.close()
    assert [(x.tenant, x.problem, x.record_id) for x in report.breaks] == [("acme", "reordered", a)]


async def test_records_written_before_the_chain_are_chained_on_migration(orchestrator_db):
    conn = await asyncpg.connect(orchestrator_db)
    try:
        await conn.execute("""CREATE TABLE dsr_audit (
            id BIGSERIAL PRIMARY KEY, request_id TEXT NOT NULL, tenant TEXT NOT NULL, event TEXT NOT NULL,
            system TEXT, outcome TEXT NOT NULL, actor TEXT, detail JSONB NOT NULL DEFAULT '{}',
            at TIMESTAMPTZ NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(), dedup_key TEXT NOT NULL UNIQUE)""")
        for i in range(3):
            await conn.execute("INSERT INTO dsr_audit (request_id, tenant, event, outcome, detail, at, dedup_key) "
                               "VALUES ('req_old', 'acme', 'received', 'ok', '{\"n\": 1}', $1, $2)",
                               T0 + timedelta(seconds=i), f"old-{i}")
    finally:
        await conn.close()
    pool = await create_pool(orchestrator_db)
    try:
        await record_audit(pool, event(1))
        async with pool.acquire() as conn:
            report = await verify_chain(conn)
        assert report.ok and report.records == {"acme": 4}
    finally:
        await pool.close()


def test_verify_without_a_database_is_bad_input(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(["audit", "verify"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "DATABASE_URL" in err
