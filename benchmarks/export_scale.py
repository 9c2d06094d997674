"""Export at scale: one subject with many rows, against PostgreSQL's own COPY of the same rows.

Prints, per row count: seconds, MB/s and the peak RSS of the export (the connector
streaming into the bundle sink), and the same for ``COPY (SELECT ...) TO STDOUT``;
the ratio of the two rates says how close the export runs to what the database
itself can push out. Each size runs in its own process so that peak RSS is its own.

    python benchmarks/export_scale.py            # 100k and 1M rows
    python benchmarks/export_scale.py 20000      # one size
    python benchmarks/export_scale.py --quoted   # payloads holding double quotes (escaped by JSON and CSV)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SUBJECT, peak_rss_mb, prepare, write_dataset

from activities.export_store import BundleSink
from connectors.postgres import PostgresConnector
from workers.embedded import ensure_database, start_embedded_postgres

REPEATS = 3
"""Runs of each mode per size; the fastest counts (the machine's noise only ever slows a run down)."""


async def run_one(url: str, rows: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "copy":
            conn = await asyncpg.connect(url)
            start = time.perf_counter()
            out = Path(tmp) / "copy.csv"
            await conn.copy_from_query(
                "SELECT id, customer_id, kind, payload, at FROM events WHERE customer_id = 1",
                output=str(out), format="csv", header=True,
            )
            seconds = time.perf_counter() - start
            await conn.close()
            size = out.stat().st_size
            exported = rows
        else:
            ds = write_dataset(Path(tmp))
            connector = PostgresConnector.from_options("bench", {"dsn": url, "dataset": str(ds)})
            await connector.open()
            sink_dir = Path(tmp) / "out"
            sink_dir.mkdir()
            sink = BundleSink(sink_dir)
            start = time.perf_counter()
            await connector.export(SUBJECT, sink)
            seconds = time.perf_counter() - start
            await connector.close()
            # COPY writes one CSV; the export writes JSON and CSV: count the CSV for a like-for-like rate.
            size = (sink_dir / "events.csv").stat().st_size
            exported = sink.exported.get("events", 0)
    return {"mode": mode, "rows": exported, "seconds": seconds, "mb": size / 1e6,
            "mb_s": size / 1e6 / seconds, "peak_rss_mb": peak_rss_mb()}


def child(pgdata: str, rows: int, mode: str) -> None:
    pg = start_embedded_postgres(Path(pgdata), keep_running=True)
    print(json.dumps(asyncio.run(run_one(pg.url("bench"), rows, mode))))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    quoted = "--quoted" in sys.argv
    sizes = [int(a) for a in sys.argv[1:] if a != "--quoted"] or [100_000, 1_000_000]
    with tempfile.TemporaryDirectory(prefix="dsr-bench-") as tmp:
        pg = start_embedded_postgres(Path(tmp) / "pg")
        asyncio.run(ensure_database(pg.url(), "bench"))
        print(f"{'rows':>9} {'mode':>7} {'seconds':>8} {'MB/s':>7} {'peak RSS MB':>11}")
        for rows in sizes:
            asyncio.run(prepare(pg.url("bench"), rows, quoted))
            runs: dict[str, list[dict]] = {"copy": [], "export": []}
            for _ in range(REPEATS):  # alternating, so that both see the same state of the machine
                for mode in runs:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", str(pg.pgdata), str(rows), mode],
                        check=True, capture_output=True, text=True,
                    )
                    runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            best = {mode: min(rs, key=lambda r: r["seconds"]) for mode, rs in runs.items()}
            for mode, r in best.items():
                rss = max(x["peak_rss_mb"] for x in runs[mode])
                print(f"{r['rows']:>9} {mode:>7} {r['seconds']:>8.2f} {r['mb_s']:>7.1f} {rss:>11.0f}")
            ratio = best["copy"]["seconds"] / best["export"]["seconds"]  # the same rows: the ratio of rows/s
            print(f"  export rate / COPY rate = {ratio:.2f} (target >= 0.5; rows per second, fastest of {REPEATS} "
                  f"runs each); export peak RSS {max(x['peak_rss_mb'] for x in runs['export']):.0f} MB "
                  f"(target < 200 MB)")
        pg.stop()


if __name__ == "__main__":
    main()
