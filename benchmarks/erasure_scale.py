"""Erasure at scale: one subject's many rows erased in batches, against one DELETE of the same rows.

Prints, per row count: the seconds and rows/s of a single ``DELETE ... WHERE customer_id = 1``
(one transaction holding every lock until the end), then of the connector's planned,
resumable erasure (plan into the orchestrator's plan store, then one transaction per
batch), with the longest time a batch's transaction held its locks. The ratio of the
rates is the price of being resumable and of short transactions. The tables are rebuilt
between the two, so both erase the very same rows.

    python benchmarks/erasure_scale.py                 # 1M rows
    python benchmarks/erasure_scale.py 20000           # one size
    python benchmarks/erasure_scale.py 20000 --batch-size 2000
    python benchmarks/erasure_scale.py --range-rows 20000 --batch-seconds 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from _common import SUBJECT, peak_rss_mb, prepare, write_dataset

from activities.db import create_pool
from activities.plan_store import PgPlanStore
from connectors.contract import PlanItem
from connectors.postgres import PostgresConnector
from workers.embedded import ensure_database, start_embedded_postgres

REPEATS = 3
"""Runs of each mode; the fastest counts (the machine's noise only ever slows a run down)."""
POLICY = {"default_strategy": "null_rewrite", "rules": [{"collections": ["events"], "strategy": "delete_row"}]}


async def single_delete(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        start = time.perf_counter()
        async with conn.transaction():
            status = await conn.execute("DELETE FROM events WHERE customer_id = 1")
        seconds = time.perf_counter() - start
    finally:
        await conn.close()
    rows = int(status.split()[-1])
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds, "longest_lock": seconds}


async def batched(url: str, orchestrator_url: str, folder: Path, tuning: dict[str, Any],
                  request_id: str = "bench") -> dict[str, Any]:
    options: dict[str, Any] = {"dsn": url, "dataset": str(write_dataset(folder)), "policy": POLICY}
    options.update({k: v for k, v in tuning.items() if v is not None})
    connector = PostgresConnector.from_options("bench", options)
    await connector.open()
    pool = await create_pool(orchestrator_url)
    locks: list[float] = []
    apply_batch = connector._apply_batch

    async def timed(chunk: list[tuple[int, PlanItem]], store: PgPlanStore) -> list[PlanItem]:
        start = time.perf_counter()  # the batch's transaction: what holds its locks
        applied = await apply_batch(chunk, store)
        locks.append(time.perf_counter() - start)
        return applied

    connector._apply_batch = timed  # type: ignore[method-assign]
    marks: dict[str, float] = {}

    def progress(detail: dict[str, Any]) -> None:
        if "planned" in detail:  # the last one comes once the plan is sealed
            marks["planned"] = time.perf_counter()

    try:
        theirs = await connector._pool.fetchval("SELECT count(*) FROM events WHERE customer_id = 2")  # type: ignore[union-attr]
        plan = PgPlanStore(pool, request_id, "bench")
        start = time.perf_counter()
        outcome = await connector.erase(SUBJECT, plan, progress)
        seconds = time.perf_counter() - start
        left = await connector._pool.fetchval("SELECT count(*) FROM events WHERE customer_id = 1")  # type: ignore[union-attr]
        others = await connector._pool.fetchval("SELECT count(*) FROM events WHERE customer_id = 2")  # type: ignore[union-attr]
        items = await pool.fetchval("SELECT count(*) FROM dsr_erasure_plan_item WHERE request_id = $1", request_id)
    finally:
        await connector.close()
        await pool.close()
    rows = outcome.deleted.get("events", 0)
    assert left == 0, f"{left} rows left"
    assert others == theirs, f"{others} rows of the other customer left, not {theirs}"
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds, "longest_lock": max(locks),
            "batches": len(locks), "planning": marks.get("planned", start) - start, "items": items,
            "range_rows": connector.config.range_rows, "batch_seconds": connector.config.batch_seconds}


async def run(rows: int, tuning: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="dsr-bench-") as tmp:
        pg = start_embedded_postgres(Path(tmp) / "pg")
        try:
            await ensure_database(pg.url(), "bench")
            await ensure_database(pg.url(), "orchestrator")
            url = pg.url("bench")
            singles, mines = [], []
            for i in range(REPEATS):  # alternating, each on the table rebuilt: both erase the very same rows
                await prepare(url, rows)
                singles.append(await single_delete(url))
                await prepare(url, rows)
                mines.append(await batched(url, pg.url("orchestrator"), Path(tmp), tuning, f"bench-{i}"))
        finally:
            pg.stop()
    single = min(singles, key=lambda r: r["seconds"])
    mine = {**min(mines, key=lambda r: r["seconds"]), "longest_lock": max(r["longest_lock"] for r in mines)}
    print(f"{'rows':>9} {'mode':>8} {'seconds':>8} {'rows/s':>9} {'longest lock s':>14}")
    for name, r in (("DELETE", single), ("batched", mine)):
        print(f"{r['rows']:>9} {name:>8} {r['seconds']:>8.2f} {r['rate']:>9.0f} {r['longest_lock']:>14.3f}")
    print(f"  batched: {mine['items']} plan items (key ranges of {mine['range_rows']} rows), {mine['batches']} "
          f"transactions (sized to {mine['batch_seconds']} s), planning {mine['planning']:.2f} s, "
          f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"  batched rate / single DELETE rate = {mine['rate'] / single['rate']:.2f} (target >= 0.5; fastest of "
          f"{REPEATS} runs each); longest batch transaction {mine['longest_lock']:.3f} s in any run (target <= 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", type=int, default=[1_000_000])
    parser.add_argument("--batch-size", type=int, default=None, help="the connector's batch_size option")
    parser.add_argument("--range-rows", type=int, default=None, help="the connector's range_rows option")
    parser.add_argument("--batch-seconds", type=float, default=None, help="the connector's batch_seconds option")
    args = parser.parse_args()
    tuning = {"batch_size": args.batch_size, "range_rows": args.range_rows, "batch_seconds": args.batch_seconds}
    for rows in args.rows:
        asyncio.run(run(rows, tuning))


if __name__ == "__main__":
    main()
