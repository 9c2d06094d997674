"""``dsr demo`` (``make demo``): the main job end to end on the embedded stack.

1. Start Temporal and PostgreSQL (:class:`workers.dev.DevStack`), load Fides'
   example database fresh into ``demo_appdb``, then start the worker and the API.
2. Through the HTTP API, as the support portal: submit an access request for
   one customer; as the tenant's administrator: approve it; wait until it ends.
   The same for an erasure request.
3. Print what was found, exported, erased and retained per collection, where
   the bundle is, and how to open the Temporal UI.
4. Check it all happened: the bundle exists and holds a manifest, every system
   finished the erasure, the customer row holds no plaintext email, and
   Temporal's SQLite file holds no plaintext email either (payloads are
   encrypted). The exit status is 0 only if every check passed.

The subject's email appears once in the output, naming whose request it is;
it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import signal
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from workers.config import ConfigError, Settings
from workers.dev import DevStack
from workers.embedded import with_database
from workers.logs import configure_logging
from workflows.models import TERMINAL_STEPS

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_SQL = DEMO_DIR / "postgres_sample.sql"
DEMO_DATABASE = "demo_appdb"
SUBJECT_EMAIL = "jane@example.com"
# Public demo tokens: their SHA-256 is in workers/demo/dsr.demo.toml. Never deploy them.
PORTAL_TOKEN = "demo-portal-acme"
ADMIN_TOKEN = "demo-admin-acme"
REQUEST_TIMEOUT = 120.0
POLL_INTERVAL = 0.25
TERMINAL = {s.value for s in TERMINAL_STEPS}


class DemoError(Exception):
    """A demo step failed; the message says which."""


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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def demo_tenant(settings: Settings) -> str:
    """The tenant of the demo tokens; a clear error when the configuration lacks them."""
    by_hash = {t.sha256: t for t in settings.api.tokens}
    portal, admin = by_hash.get(_sha256(PORTAL_TOKEN)), by_hash.get(_sha256(ADMIN_TOKEN))
    if portal is None or admin is None or portal.role != "portal" or admin.role != "admin":
        raise ConfigError("the demo needs its demo tokens: run it with --config workers/demo/dsr.demo.toml")
    if portal.tenant != admin.tenant:
        raise ConfigError("the demo tokens must belong to the same tenant")
    return portal.tenant


# --- the example database ---------------------------------------------------------------


async def load_example_database(admin_url: str) -> str:
    """(Re)create ``demo_appdb`` with Fides' example schema and rows; return its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
    finally:
        await conn.close()
    url = with_database(admin_url, DEMO_DATABASE)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(DEMO_SQL.read_text())
    finally:
        await conn.close()
    return url


async def terminate_leftovers(stack: DevStack, settings: Settings) -> int:
    """Terminate requests an earlier demo run left running: the example database they worked on is gone.

    Runs before the worker starts, so none of them touches the freshly loaded database.
    """
    assert stack.client is not None
    query = (
        "WorkflowType = 'DataSubjectRequestWorkflow' AND ExecutionStatus = 'Running' "
        f"AND TaskQueue = '{settings.temporal.task_queue}'"
    )
    count = 0
    async for wf in stack.client.list_workflows(query):
        await stack.client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate(
            reason="dsr demo: superseded by a new demo run (the example database was reloaded)"
        )
        count += 1
    return count


def export_system_environment(settings: Settings, url: str) -> None:
    """Point every Postgres system's ``dsn_env`` at the example database; give ``hash_secret_env`` a secret."""
    for system in settings.systems.values():
        if system.type != "postgres":
            continue
        opts = system.options()
        if opts.get("dsn_env"):
            os.environ[opts["dsn_env"]] = url
        if opts.get("hash_secret_env") and not os.environ.get(opts["hash_secret_env"]):
            os.environ[opts["hash_secret_env"]] = secrets.token_hex(32)


# --- the HTTP API, as the portal and the administrator -------------------------------


class ApiClient:
    """The few calls the demo makes, with the demo tokens."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base = base_url
        self.latest: dict[str, dict[str, Any]] = {}

    async def _json(self, method: str, path: str, token: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {"detail": (await resp.text())[:300]}
            return resp.status, body if isinstance(body, dict) else {"body": body}

    async def submit(self, kind: str) -> str:
        """Submit a request for the demo subject as the portal; return its id."""
        status, body = await self._json(
            "POST", "/v1/requests", PORTAL_TOKEN,
            json={"kind": kind, "identities": {"email": SUBJECT_EMAIL}},
            headers={"Idempotency-Key": f"demo-{kind}-{uuid.uuid4().hex}"},
        )  # fmt: skip
        if status not in (200, 201) or "id" not in body:
            raise DemoError(f"submitting the {kind} request: HTTP {status} {_problem(body)}")
        return str(body["id"])

    async def status(self, request_id: str) -> dict[str, Any]:
        """The request's status, as its tenant administrator sees it."""
        status, body = await self._json("GET", f"/v1/requests/{request_id}", ADMIN_TOKEN)
        if status != 200:
            raise DemoError(f"reading request {request_id}: HTTP {status} {_problem(body)}")
        return body

    async def wait_for(
        self, request_id: str, done: Callable[[str], bool], deadline: float, *, kind: str
    ) -> dict[str, Any]:
        """Poll until ``done(step)`` or the deadline; the latest status is kept in ``latest[kind]``."""
        while True:
            body = await self.status(request_id)
            self.latest[kind] = body
            if done(str(body.get("step"))):
                return body
            if time.monotonic() > deadline:
                raise DemoError(
                    f"request {request_id} still at step {body.get('step')!r} after {REQUEST_TIMEOUT:.0f}s"
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def approve(self, request_id: str, deadline: float) -> None:
        """Approve as the tenant administrator (retrying while the workflow reaches its gate)."""
        while True:
            status, body = await self._json(
                "POST", f"/v1/requests/{request_id}/decision", ADMIN_TOKEN,
                json={"outcome": "approve", "reason": "demo: identity verified by the portal login"},
            )  # fmt: skip
            if status in (200, 201):
                return
            if status != 409 or time.monotonic() > deadline:
                raise DemoError(f"approving request {request_id}: HTTP {status} {_problem(body)}")
            await asyncio.sleep(POLL_INTERVAL)

    async def run_request(self, kind: str) -> dict[str, Any]:
        """Submit, approve once the gate is reached, and wait for the end; return the final status."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        request_id = await self.submit(kind)
        print(f"  {kind} request {request_id} submitted; waiting for the approval gate", flush=True)
        body = await self.wait_for(
            request_id, lambda s: s == "awaiting_approval" or s in TERMINAL, deadline, kind=kind
        )
        if body.get("step") == "awaiting_approval":
            await self.approve(request_id, deadline)
            print(f"  {kind} request {request_id} approved by the tenant administrator; running", flush=True)
            body = await self.wait_for(request_id, lambda s: s in TERMINAL, deadline, kind=kind)
        print(f"  {kind} request {request_id}: {body.get('step')}", flush=True)
        return body


def _problem(body: dict[str, Any]) -> str:
    return str(body.get("detail") or body.get("title") or body)[:300]


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


async def subject_customer_ids(url: str) -> list[int]:
    """Ids of the subject's customer rows, read before anything is erased."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id FROM customer WHERE lower(email) = lower($1) ORDER BY id", SUBJECT_EMAIL)
    finally:
        await conn.close()
    return [int(r["id"]) for r in rows]


async def customer_rows_clean(url: str, ids: list[int]) -> Check:
    """The subject's customer rows hold no plaintext email after the erasure."""
    name = f"no plaintext email left in {DEMO_DATABASE}.customer"
    conn = await asyncpg.connect(url)
    try:
        plain = await conn.fetchval(
            "SELECT count(*) FROM customer WHERE strpos(lower(coalesce(email, '')), lower($1)) > 0", SUBJECT_EMAIL
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


def temporal_db_clean(state_dir: Path) -> Check:
    """Temporal's SQLite files (with the WAL) never hold the email in plain text."""
    name = "no plaintext email in Temporal's database (payloads are encrypted)"
    files = sorted(state_dir.glob("temporal.db*"))
    if not files:
        return Check(name, False, f"no Temporal database in {state_dir}")
    needle = SUBJECT_EMAIL.encode()
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
        f"  payloads show as binary/encrypted: the codec key is {settings.codec_key_file.resolve()}",
    ]


# --- the demo -------------------------------------------------------------------------


async def run_demo(settings: Settings, *, stay: bool = False) -> int:
    """Run the demo; return 0 only if every check passed.

    Args:
        settings: The demo configuration (``workers/demo/dsr.demo.toml``).
        stay: Keep the stack running after the summary until Ctrl-C.
    """
    configure_logging(level=logging.WARNING)
    run = DemoRun(tenant=demo_tenant(settings))
    print(f"DSR demo: subject: {SUBJECT_EMAIL}, tenant {run.tenant}", flush=True)

    async def load(stack: DevStack) -> None:
        left = await terminate_leftovers(stack, settings)
        if left:
            print(f"  terminated {left} request(s) left running by an earlier demo run", flush=True)
        admin = stack.admin_database_url or with_database(stack.orchestrator_database_url or "", "postgres")
        run.appdb_url = await load_example_database(admin)
        run.subject_customer_ids = await subject_customer_ids(run.appdb_url)
        export_system_environment(settings, run.appdb_url)
        print(f"  loaded Fides' example database into {DEMO_DATABASE}", flush=True)

    stack = DevStack(settings, before_services=load)
    print(f"  starting Temporal, PostgreSQL, the worker and the API (state in {stack.state_dir})", flush=True)
    async with stack:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stack.request_stop)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            api = ApiClient(http, stack.api_url)
            try:
                run.access = await stack.run_until(api.run_request("access"))
                run.erasure = await stack.run_until(api.run_request("erasure"))
            except (DemoError, aiohttp.ClientError, TimeoutError) as exc:
                run.checks.append(Check("requests ran through the HTTP API", False, str(exc) or type(exc).__name__))
                run.access = run.access or api.latest.get("access")
                run.erasure = run.erasure or api.latest.get("erasure")
        run.checks.extend(request_checks(run))
        if run.appdb_url:
            run.checks.append(await customer_rows_clean(run.appdb_url, run.subject_customer_ids))
        print()
        for line in [*summarise("access", run.access), "", *summarise("erasure", run.erasure), ""]:
            print(line)
        for line in how_to_look(stack, settings):
            print(line)
        if stay:
            print(f"\nThe stack keeps running: API {stack.api_url}, Temporal UI {stack.ui_url}. Ctrl-C to stop.")
            await stack.wait()
    # Temporal has stopped: its SQLite file and WAL are complete.
    run.checks.append(temporal_db_clean(stack.state_dir))

    print("\nChecks")
    for c in run.checks:
        print(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + (f": {c.detail}" if c.detail else ""))
    failed = [c for c in run.checks if not c.ok]
    if failed:
        print(f"\nDemo FAILED: {len(failed)} check(s) did not pass.", flush=True)
        return 1
    print("\nDemo passed.", flush=True)
    return 0
