"""Waiting at scale: many requests open and waiting for approval, then approved all at once.

N access requests that need the administrator's approval are started on the embedded stack (Temporal
dev server, one worker in a process of its own, Fides' example in embedded PostgreSQL as the one
system) and left waiting at the approval gate. They are started in batches of 100, each once the batch
before waits at the gate, as a portal's steady stream would arrive rather than as one burst. The
benchmark prints the worker's RSS while they wait, against its RSS idle (a waiting request is durable
state on the server; the worker keeps at most its workflow cache in memory), the time to approve them
all with the ``decide`` update the admin console sends (evicted workflows are replayed to take it),
and the time until every one has completed.

    python benchmarks/waiting.py             # the default size (see DEFAULT_N)
    python benchmarks/waiting.py 500         # N requests
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TENANT, Stack, access_request, rss_mb, start_request

from workflows.models import RequestStatus, Step
from workflows.updates import Decision

CONCURRENCY = 50
"""Starts and approvals in flight at once (the API serving many callers)."""
DEFAULT_N = 10_000
"""About 40 minutes on the development machine (README, Performance); ``python benchmarks/waiting.py 1000`` for a
quicker look."""
BATCH = 100
"""Requests started before waiting for them to reach the gate."""
UPDATE_ATTEMPTS = 10
"""Times one approval is sent before the run gives up (each waits for the update's RPC timeout)."""
APPROVAL = Decision(actor="bench-admin", outcome="approve", tenant=TENANT)


async def count(stack: Stack, query: str) -> int:
    """Request workflows matching a visibility ``query``."""
    found = await stack.client.count_workflows(f"WorkflowType = 'DataSubjectRequestWorkflow' AND {query}")
    return found.count


async def until(stack: Stack, query: str, n: int, what: str, *, timeout: float, quiet: bool = False) -> float:
    """Wait until ``n`` request workflows match ``query``, printing progress; returns the seconds it took."""
    start = time.perf_counter()
    last = -1
    while True:
        got = await count(stack, query)
        if got >= n:
            return time.perf_counter() - start
        if not stack.worker_alive():
            raise RuntimeError("the worker died; see worker.log")
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"only {got}/{n} {what} after {timeout:.0f}s")
        if not quiet and got != last and (time.perf_counter() - start) > 1:
            print(f"  {what}: {got}/{n} after {time.perf_counter() - start:.0f}s", flush=True)
            last = got
        await asyncio.sleep(1 if quiet else 5)


async def in_waves(n: int, call: Callable[[int], Awaitable[None]], what: str) -> float:
    """Run ``call(i)`` for i < n, ``CONCURRENCY`` at once, printing progress (unless ``what`` is empty);
    returns the seconds it took."""
    slots = asyncio.Semaphore(CONCURRENCY)
    done = 0
    step = max(1, n // 10)
    start = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal done
        async with slots:
            await call(i)
        done += 1
        if what and done % step == 0:
            print(f"  {what} {done}/{n} ({done / (time.perf_counter() - start):.0f}/s)", flush=True)

    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dsr-bench-") as tmp:
        stack = Stack(Path(tmp))
        ids: list[str] = []
        rss: list[float] = []
        try:
            await stack.start(systems=("appdb",))
            pid = stack.start_worker()
            queue = stack.settings.temporal.task_queue
            # Warm up: one request through the gate, so that the worker has opened its connector.
            warm = await start_request(stack.client, access_request(0, approval=True), queue)
            await until(stack, "DsrStep = 'awaiting_approval'", 1, "warm-up waiting", timeout=120)
            await warm.execute_update("decide", APPROVAL)
            status: RequestStatus = await asyncio.wait_for(warm.result(), 120)
            assert status.step == Step.COMPLETED, status.step
            await asyncio.sleep(2)
            idle = rss_mb(pid)
            print(f"{n} access requests waiting for approval (Fides' example, one worker); worker RSS idle "
                  f"{idle:.0f} MB", flush=True)

            async def start(i: int) -> None:
                request = access_request(i, approval=True)
                ids.append(request.id)
                await start_request(stack.client, request, queue)

            # Started in batches, each once the one before waits at the gate: a burst of thousands of new
            # workflows at once makes one worker's workflow tasks time out (10 s) and start over.
            t0 = time.perf_counter()
            for first in range(0, n, BATCH):
                size = min(BATCH, n - first)
                await in_waves(size, lambda i, first=first: start(first + i), "")
                await until(stack, "DsrStep = 'awaiting_approval'", first + size, "", timeout=60 + 5 * size,
                            quiet=True)
                done = first + size
                if done % max(BATCH, (n // 10) // BATCH * BATCH) == 0 or done == n:
                    elapsed = time.perf_counter() - t0
                    print(f"  waiting at the gate: {done}/{n} after {elapsed:.0f}s ({done / elapsed:.1f}/s), "
                          f"worker RSS {rss_mb(pid):.0f} MB", flush=True)
            at_gate = time.perf_counter() - t0
            for _ in range(10):
                rss.append(rss_mb(pid))
                await asyncio.sleep(1)

            retries = 0

            async def approve(i: int) -> None:
                # As the admin console does on the API's 503: the same update again (the same id: taken once).
                nonlocal retries
                handle = stack.client.get_workflow_handle(ids[i])
                for attempt in range(UPDATE_ATTEMPTS):
                    try:
                        await handle.execute_update("decide", APPROVAL, id=f"approve-{ids[i]}")
                        return
                    except WorkflowUpdateRPCTimeoutOrCancelledError:
                        if attempt + 1 == UPDATE_ATTEMPTS:  # the worker is not coming back: stop, do not hang
                            raise
                        retries += 1

            approved = await in_waves(n, approve, "approved")
            completed = approved + await until(stack, "ExecutionStatus = 'Completed'", n + 1, "completed",
                                               timeout=60 + 2 * n)
            after = rss_mb(pid)
        finally:
            await stack.stop()
    waiting = sum(rss) / len(rss)
    print(f"  {n} started and waiting at the gate after {at_gate:.1f}s ({n / at_gate:.1f}/s)")
    print(f"  worker RSS: idle {idle:.0f} MB, {n} waiting {waiting:.0f} MB (max {max(rss):.0f}), "
          f"after they completed {after:.0f} MB")
    print(f"  approved {n} in {approved:.1f}s ({n / approved:.0f}/s; {retries} updates sent again after the "
          f"worker did not take them in time); all completed {completed:.1f}s after the "
          f"first approval ({n / completed:.1f}/s)")
    print(f"  worker RSS waiting / idle = {waiting / idle:.2f} (limit: flat, the workflow cache is bounded); "
          f"{max(0.0, waiting - idle) * 1000 / n:.1f} KB per waiting request")
    print(f"  approval rate / rate of reaching the gate = {at_gate / approved:.2f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_N))
