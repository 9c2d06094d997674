"""What ``dsr demo`` checks and prints at the end (:func:`workers.demo.run_demo`).

The checks: both requests completed, the access request found the subject's
data and left a bundle holding ``manifest.json``, every system finished the
erasure, the customer rows hold no plaintext email, and Temporal's SQLite
files hold no plaintext email either. The summary: per request, system and
collection, what was found, exported, masked, deleted and retained; where the
bundle is; and how to look at the requests in Temporal. The checks are
printed last, with the verdict that becomes the demo's exit status.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from workers.config import Settings

if TYPE_CHECKING:
    from workers.dev import DevStack


@dataclass
class Check:
    """One thing the demo promises, and whether it held."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class DemoRun:
    """What the demo learnt along the way."""

    tenant: str
    appdb_url: str | None = None
    subject_customer_ids: list[int] = field(default_factory=list)
    access: dict[str, Any] | None = None
    erasure: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)


# --- checks ---------------------------------------------------------------------------


def bundle_has_manifest(location: str) -> tuple[bool, str]:
    """Whether the bundle at ``location`` (a zip file or a folder) exists and holds ``manifest.json``."""
    if "://" in location:
        return False, f"bundle is not on this machine ({location})"
    path = Path(location)
    if not path.exists():
        return False, f"bundle not found at {path}"
    if path.is_dir():
        found = any(p.name == "manifest.json" for p in path.rglob("manifest.json"))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            found = any(Path(n).name == "manifest.json" for n in zf.namelist())
    else:
        return False, f"bundle at {path} is neither a zip file nor a folder"
    return found, "" if found else f"no manifest.json in {path}"


async def customer_rows_clean(url: str, ids: list[int], *, email: str, database: str) -> Check:
    """The subject's customer rows hold no plaintext email after the erasure.

    Args:
        url: The example database.
        ids: The subject's customer rows, from before the erasure.
        email: The subject's email.
        database: The example database's name, for the check's name.
    """
    name = f"no plaintext email left in {database}.customer"
    conn = await asyncpg.connect(url)
    try:
        plain = await conn.fetchval(
            "SELECT count(*) FROM customer WHERE strpos(lower(coalesce(email, '')), lower($1)) > 0", email
        )
        emails = await conn.fetch("SELECT id, email FROM customer WHERE id = ANY($1::int[])", ids)
    finally:
        await conn.close()
    if plain:
        return Check(name, False, f"{plain} customer row(s) still hold the plaintext email")
    if not ids:
        return Check(name, False, "the subject's customer row was not found before the erasure")
    masked = ", ".join(f"id {r['id']}: {_short(r['email'])}" for r in emails) or "row deleted"
    return Check(name, True, masked)


def _short(value: str | None) -> str:
    if value is None:
        return "NULL"
    return value if len(value) <= 24 else value[:20] + "..."


def temporal_db_clean(state_dir: Path, *, email: str) -> Check:
    """Temporal's SQLite files (with the WAL) never hold the email in plain text.

    Args:
        state_dir: The state folder holding ``temporal.db*``.
        email: The subject's email.
    """
    name = "no plaintext email in Temporal's database (payloads are encrypted)"
    files = sorted(state_dir.glob("temporal.db*"))
    if not files:
        return Check(name, False, f"no Temporal database in {state_dir}")
    needle = email.encode()
    dirty = [f.name for f in files if needle in f.read_bytes()]
    if dirty:
        return Check(name, False, "found in " + ", ".join(dirty))
    return Check(name, True, ", ".join(f.name for f in files) + " scanned")


def request_checks(run: DemoRun) -> list[Check]:
    """Checks on the two requests' final statuses."""
    checks = []
    access = run.access or {}
    bundle = access.get("bundle") or {}
    ok = access.get("step") == "completed"
    checks.append(Check("access request completed", ok, "" if ok else _why(access)))
    found = sum(sum((st.get("found") or {}).values()) for st in (access.get("systems") or {}).values())
    checks.append(Check("access request found the subject's data", found > 0, f"{found} rows" if found else
                        "nothing found: is the example database loaded?"))
    if bundle.get("location"):
        has, detail = bundle_has_manifest(str(bundle["location"]))
        checks.append(Check("export bundle exists and holds manifest.json", has, detail or str(bundle["location"])))
    else:
        checks.append(Check("export bundle exists and holds manifest.json", False, "the access request has no bundle"))
    erasure = run.erasure or {}
    systems = erasure.get("systems") or {}
    not_done = sorted(n for n, s in systems.items() if s.get("state") != "done")
    ok = erasure.get("step") == "completed" and bool(systems) and not not_done
    detail = "" if ok else _why(erasure) + (f"; not done: {', '.join(not_done)}" if not_done else "")
    checks.append(Check("erasure request completed in every system", ok, detail))
    return checks


def _why(status: dict[str, Any]) -> str:
    if not status:
        return "it did not run"
    errors = [f"{n}: {s.get('error')}" for n, s in (status.get("systems") or {}).items() if s.get("error")]
    parts = [f"step {status.get('step')}"]
    if status.get("outcome_reason"):
        parts.append(str(status["outcome_reason"]))
    return "; ".join(parts + errors)


# --- the summary ----------------------------------------------------------------------


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        out.append("      " + "  ".join(cells).rstrip())
    return out


def summarise(kind: str, status: dict[str, Any] | None) -> list[str]:
    """Human lines for one request: per system and collection, what happened."""
    if not status:
        return [f"{kind.capitalize()} request: did not run"]
    lines = [f"{kind.capitalize()} request {status.get('id')}: {status.get('step')}"]
    if status.get("outcome_reason"):
        lines.append(f"  reason: {status['outcome_reason']}")
    for name, st in (status.get("systems") or {}).items():
        lines.append(f"  system {name} ({st.get('type', '?')}): {st.get('state')}")
        if st.get("error"):
            lines.append(f"    error: {st['error']}")
        retained = {r["collection"]: r for r in st.get("retained") or []}
        columns = ["found", "exported"] if kind != "erasure" else ["found", "masked", "deleted", "retained"]
        collections = sorted(
            set(st.get("found") or {}) | set(st.get("exported") or {}) | set(st.get("masked") or {})
            | set(st.get("deleted") or {}) | set(retained)
        )  # fmt: skip
        rows = [["collection", *columns]]
        for c in collections:
            cells = []
            for col in columns:
                if col == "retained":
                    value = retained[c]["count"] if c in retained else None
                else:
                    value = (st.get(col) or {}).get(c)
                cells.append("-" if value is None else str(value))
            rows.append([c, *cells])
        if len(rows) > 1:
            lines.extend(_table(rows))
        for r in retained.values():
            kept = ", ".join(r.get("fields") or []) or "whole rows"
            lines.append(f"    retained {r['collection']} ({r['count']}, {kept}): {r['ground']}")
        if st.get("remaining"):
            lines.append(f"    remaining after erasure: {st['remaining']}")
    bundle = status.get("bundle")
    if bundle:
        lines.append(f"  bundle  {bundle.get('location')}")
        lines.append(
            f"          sha256 {bundle.get('sha256')}, {bundle.get('files')} files, {bundle.get('bytes')} bytes"
        )
    return lines


def how_to_look(stack: DevStack, settings: Settings) -> list[str]:
    """How to see the requests in Temporal."""
    return [
        "Temporal UI",
        f"  {stack.ui_url} while a stack runs: `make dev`,"
        " or `.venv/bin/dsr --config workers/demo/dsr.demo.toml demo --stay`",
        f"  .venv/bin/temporal workflow list --address {settings.temporal.address}"
        f" --namespace {settings.temporal.namespace}",
        "  payloads are sealed (binary/encrypted), each request with its own key. To read them, sign in at",
        f"  {stack.api_url}/admin with an admin key (the demo's: demo-admin-acme) and tick \"Include",
        "  cross-origin credentials\" in the UI's codec server settings; or give the CLI",
        f"  --codec-endpoint {stack.api_url}/codec --codec-auth 'Bearer demo-admin-acme'",
    ]


def print_summary(run: DemoRun, stack: DevStack, settings: Settings) -> None:
    """Print what each request did and how to see the requests in Temporal."""
    print()
    for line in [*summarise("access", run.access), "", *summarise("erasure", run.erasure), ""]:
        print(line)
    for line in how_to_look(stack, settings):
        print(line)


def print_checks(checks: list[Check]) -> int:
    """Print every check and the verdict; return 0 only if every check passed."""
    print("\nChecks")
    for c in checks:
        print(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + (f": {c.detail}" if c.detail else ""))
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"\nDemo FAILED: {len(failed)} check(s) did not pass.", flush=True)
        return 1
    print("\nDemo passed.", flush=True)
    return 0
