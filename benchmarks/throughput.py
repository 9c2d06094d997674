"""Orchestration throughput: pre-approved access requests through Temporal, against the same calls made directly.

N access requests (``approval_required`` false) across four systems: Fides' example in embedded
PostgreSQL, a scim2-server directory, S3 backups on moto's server and an OpenDSR partner that completes
at once. The Temporal run starts the N workflows on the dev server with one worker (a process of its
own); the plain run makes the same connector calls from one asyncio script without Temporal: per
system ``locate``, then ``export`` into a bundle sink with its files put in the export store, then the
bundle, as ``activities/requests.py`` does, with as many calls at once as the worker runs activities
(50). Both are timed from the moment all N are submitted; the ratio of their rates is what durable
orchestration (workflow tasks, audit records, notifications, the data keys of the codec) costs.

    python benchmarks/throughput.py          # 200 requests
    python benchmarks/throughput.py 50       # N requests
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Stack, access_request, percentile, rss_mb, start_request

from activities.export_store import BundleSink, build_bundle, export_store_from
from connectors.contract import Capability, Connector, Subject
from connectors.registry import build_connector
from workers.config import WorkerSettings
from workflows.models import RequestStatus, Step, SystemState

CONCURRENCY = WorkerSettings().max_concurrent_activities
"""Connector calls at once in the plain run: as many as the worker runs activities (50)."""
WARM_UP = 4


async def plain_run(stack: Stack, n: int) -> list[float]:
    """The connector calls of ``n`` access requests without Temporal; each request's seconds to complete."""
    settings = stack.settings
    connectors: dict[str, Connector] = {}
    for name, cfg in settings.systems.items():
        connectors[name] = build_connector(name, cfg.type, cfg.options())
        await connectors[name].open()
    store = export_store_from(settings)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def system(request_id: str, subject: Subject, name: str, connector: Connector) -> str | None:
        async with slots:
            await connector.locate(subject)
        if Capability.EXPORT not in connector.capabilities:
            return None
        part = f"{request_id}/parts/{name}"
        async with slots:
            with tempfile.TemporaryDirectory(prefix="dsr-export-") as tmp:
                sink = BundleSink(Path(tmp))
                await connector.export(subject, sink)
                for f in sink.files:
                    await store.put(f"{part}/{f.name}", Path(tmp) / f.name)
        return part

    async def one(index: int, t0: float) -> float:
        request = access_request(index, approval=False)
        subject = Subject(request_id=request.id, identities=request.identities.as_dict())
        parts = await asyncio.gather(*(system(request.id, subject, name, c) for name, c in connectors.items()))
        async with slots:
            await build_bundle(store, request.id, [p for p in parts if p])
        return time.perf_counter() - t0

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, t0) for i in range(WARM_UP)))
        t0 = time.perf_counter()
        return list(await asyncio.gather(*(one(i, t0) for i in range(n))))
    finally:
        for c in connectors.values():
            await c.close()


async def temporal_run(stack: Stack, n: int, rss: list[float]
                       ) -> tuple[list[float], list[RequestStatus], dict[str, float]]:
    """``n`` access request workflows on the worker: each one's seconds to complete and final status, the CPU."""
    queue = stack.settings.temporal.task_queue
    starts = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int, t0: float) -> tuple[float, RequestStatus]:
        async with starts:
            handle = await start_request(stack.client, access_request(index, approval=False), queue)
        status = await handle.result()
        return time.perf_counter() - t0, status

    async def watch_worker() -> None:
        while stack.worker_alive():
            rss.append(rss_mb(stack.worker.pid))  # type: ignore[union-attr]
            await asyncio.sleep(0.5)
        raise RuntimeError("the worker died; see worker.log")

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i, t0) for i in range(WARM_UP))), 120)
    watch = asyncio.create_task(watch_worker())
    before = stack.cpu_seconds()
    t0 = time.perf_counter()
    work = asyncio.ensure_future(asyncio.gather(*(one(i, t0) for i in range(n))))
    finished, _ = await asyncio.wait({work, watch}, timeout=600 + 5 * n, return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if work not in finished:
        work.cancel()
        if watch in finished:
            watch.result()
        raise TimeoutError(f"the {n} requests did not complete in {600 + 5 * n}s")
    done = work.result()
    cpu = _spent(before, stack.cpu_seconds())
    history = await stack.client.get_workflow_handle(done[-1][1].id).fetch_history()
    kinds = [e.WhichOneof("attributes") for e in history.events]
    print(f"  one request's history: {len(kinds)} events, "
          f"{kinds.count('activity_task_scheduled_event_attributes')} activities, "
          f"{kinds.count('workflow_task_completed_event_attributes')} workflow tasks")
    return [d[0] for d in done], [d[1] for d in done], cpu


def row(mode: str, seconds: list[float]) -> float:
    """Print one mode's figures; returns its requests per second."""
    wall = max(seconds)
    rate = len(seconds) / wall
    print(f"{mode:>9} {len(seconds):>9} {wall:>8.2f} {rate:>7.1f} {percentile(seconds, 0.5):>7.2f} "
          f"{percentile(seconds, 0.95):>7.2f}")
    return rate


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dsr-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            await stack.start()
            systems = ", ".join(f"{name} ({cfg.type})" for name, cfg in stack.settings.systems.items())
            print(f"{n} pre-approved access requests across {systems}")
            before = stack.cpu_seconds()
            plain = await plain_run(stack, n)
            plain_cpu = _spent(before, stack.cpu_seconds())
            stack.start_worker()
            rss: list[float] = []
            seconds, statuses, temporal_cpu = await temporal_run(stack, n, rss)
        finally:
            await stack.stop()
    print(f"{'mode':>9} {'requests':>9} {'seconds':>8} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    plain_rate = row("plain", plain)
    temporal_rate = row("temporal", seconds)
    completed = sum(1 for s in statuses if s.step == Step.COMPLETED)
    states: dict[str, int] = {}
    for s in statuses:
        for st in s.systems.values():
            states[st.state.value] = states.get(st.state.value, 0) + 1
    exported = sum(1 for s in statuses if s.bundle is not None)
    print(f"  completed {completed}/{n}, with a bundle {exported}/{n}; system states {_fmt(states)}")
    if states.get(SystemState.NEEDS_ATTENTION.value):
        print("  some systems need attention: see the worker's log")
    print(f"  worker RSS during the run: {min(rss, default=0):.0f}-{max(rss, default=0):.0f} MB")
    print(f"  CPU seconds per request: plain {_fmt_cpu(plain_cpu, n)}; temporal {_fmt_cpu(temporal_cpu, n)}")
    print(f"  Temporal throughput / plain script = {temporal_rate / plain_rate:.2f} (target >= 0.5)")


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def _fmt_cpu(cpu: dict[str, float], n: int) -> str:
    return ", ".join(f"{k} {v / n:.3f}" for k, v in cpu.items() if v > 0.005 * n)


def _fmt(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
