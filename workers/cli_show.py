"""How the ``dsr`` CLI prints what the API answers, and follows a request with ``--wait``.

Readable output is a small key/value block or a table on stdout; ``--json`` prints the API's JSON as it
came. While ``--wait`` follows a request, progress goes to stderr (one line per step change, or a spinner
on a terminal), so that stdout holds only the result.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from workflows.models import TERMINAL_STEPS, Step

EXIT_OK = 0
EXIT_FAILED = 1
POLL_SECONDS = 0.5
SPINNER = "|/-\\"

SETTLED_STEPS = frozenset({*TERMINAL_STEPS, Step.RESTRICTED, Step.NEEDS_ATTENTION})
"""Steps ``--wait`` stops at: the end, a restriction in force (it stays until lifted), or a person's turn."""
SUCCESS_STEPS = frozenset({Step.COMPLETED, Step.RESTRICTED})


def exit_code_for(step: str) -> int:
    """0 for a request that completed (or whose restriction is in force), 1 for any other end."""
    return EXIT_OK if step in SUCCESS_STEPS else EXIT_FAILED


def print_json(value: Any, out: TextIO | None = None) -> None:
    """``value`` as indented JSON."""
    print(json.dumps(value, indent=2, sort_keys=True), file=out or sys.stdout)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO | None = None) -> None:
    """A plain text table: left-aligned columns, two spaces apart."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out or sys.stdout)


def _when(value: Any) -> str:
    if not isinstance(value, str):
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def days_left(due_at: Any, now: datetime | None = None) -> str:
    """``due 2027-01-02 (31 days left)``-style text for a deadline, or ``-``."""
    if not isinstance(due_at, str):
        return "-"
    due = datetime.fromisoformat(due_at)
    days = (due - (now or datetime.now(UTC))).days
    left = f"{days} days left" if days >= 0 else f"{-days} days overdue"
    return f"{due.astimezone(UTC):%Y-%m-%d} ({left})"


def _total(value: Any) -> str:
    """Records over all collections (``--json`` has them per collection)."""
    if not isinstance(value, Mapping) or not value:
        return "-"
    return str(sum(n for n in value.values() if isinstance(n, int)))


def show_request(status: Mapping[str, Any], out: TextIO | None = None) -> None:
    """A request's status: its fields, then one line per system."""
    out = out or sys.stdout
    ended = status.get("step") in TERMINAL_STEPS
    fields: list[tuple[str, Any]] = [
        ("id", status.get("id")), ("tenant", status.get("tenant")), ("kind", status.get("kind")),
        ("step", status.get("step")), ("received", _when(status.get("received_at"))),
        ("due", _when(status.get("due_at")) if ended else days_left(status.get("due_at"))),
    ]
    for key, label in (("decision", "decision"), ("extension", "extension"), ("cancellation", "cancelled")):
        recorded = status.get(key)
        if isinstance(recorded, Mapping):
            what = recorded.get("outcome") or (f"+{recorded['months']} month(s)" if "months" in recorded else "")
            fields.append((label, f"{what} by {recorded.get('actor', '?')}: {recorded.get('reason') or '-'}"))
    if status.get("outcome_reason"):
        fields.append(("reason", status["outcome_reason"]))
    if status.get("completed_at"):
        fields.append(("completed", _when(status["completed_at"])))
    bundle = status.get("bundle")
    if isinstance(bundle, Mapping) and bundle.get("location"):
        fields.append(("bundle", bundle["location"]))
    if status.get("overdue"):
        fields.append(("overdue", "yes"))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {'-' if value is None else value}", file=out)
    systems = status.get("systems") or {}
    if systems:
        print(file=out)
        table([(name, s.get("type"), s.get("state"), _total(s.get("found")), _total(s.get("exported")),
                _total(s.get("masked")), _total(s.get("deleted")), len(s.get("retained") or []) or "-")
               for name, s in systems.items()],
              ["SYSTEM", "TYPE", "STATE", "FOUND", "EXPORTED", "MASKED", "DELETED", "RETAINED"], out)


def show_dispute(status: Mapping[str, Any], out: TextIO | None = None) -> None:
    """A dispute's status as key/value lines."""
    out = out or sys.stdout
    resolution = status.get("resolution")
    fields = [
        ("id", status.get("id")), ("tenant", status.get("tenant")), ("step", status.get("step")),
        ("opened", _when(status.get("opened_at"))),
        ("restricted", ", ".join(sorted(status.get("restricted") or {})) or "-"),
        ("resolution", f"{resolution.get('outcome')} by {resolution.get('actor')}: {resolution.get('reason')}"
         if isinstance(resolution, Mapping) else "-"),
        ("follow-up", status.get("follow_up_request_id") or "-"),
    ]
    for key, value in fields:
        print(f"{key.ljust(10)}  {value}", file=out)


def show_list(answer: Mapping[str, Any], out: TextIO | None = None) -> None:
    """A page of ``GET /v1/requests``, then how to get the next one."""
    out = out or sys.stdout
    rows = [(r.get("id"), r.get("tenant"), r.get("kind"), r.get("step"), days_left(r.get("due_at")),
             _when(r.get("received_at"))) for r in answer.get("requests") or []]
    if not rows:
        print("no requests", file=out)
    else:
        table(rows, ["ID", "TENANT", "KIND", "STEP", "DUE", "RECEIVED"], out)
    if answer.get("next_page_token"):
        print(f"\nmore: --page-token {answer['next_page_token']}", file=out)


async def follow(
    fetch: Callable[[], Awaitable[Mapping[str, Any]]],
    first: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    interval: float = POLL_SECONDS,
    progress: TextIO | None = None,
) -> Mapping[str, Any]:
    """Poll a request until it settles (see :data:`SETTLED_STEPS`), showing each step on ``progress``.

    Args:
        fetch: Reads the request's current status.
        first: A status already read (e.g. the answer to the create or decide call).
        timeout: Give up after this many seconds (``TimeoutError``); None waits as long as it takes.
        interval: Seconds between two reads.
        progress: Where progress goes (stderr); a spinner when it is a terminal.

    Returns:
        The settled status.
    """
    progress = progress or sys.stderr
    tty = progress.isatty()
    spin = itertools.cycle(SPINNER)
    started = time.monotonic()
    status = first if first is not None else await fetch()
    last: str | None = None
    while True:
        step = str(status.get("step"))
        if step != last:
            if tty:
                progress.write("\r\x1b[K")
            progress.write(f"{datetime.now(UTC):%H:%M:%S}  {status.get('id')}  {step}\n")
            progress.flush()
            last = step
        if step in SETTLED_STEPS:
            return status
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout:
            if tty:
                progress.write("\r\x1b[K")
            raise TimeoutError(f"the request is still {step} after {timeout:.0f}s")
        if tty:
            progress.write(f"\r{next(spin)} {step} ({elapsed:.0f}s)")
            progress.flush()
        await asyncio.sleep(interval)
        status = await fetch()
