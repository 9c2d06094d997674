"""``dsr demo`` (``make demo``): the main job end to end on the embedded stack.

1. Start Temporal and PostgreSQL (:class:`workers.dev.DevStack`), load Fides'
   example database fresh into ``demo_appdb``, then start the worker and the API.
2. Through the HTTP API, as the support portal: submit an access request for
   one customer; as the tenant's administrator: approve it; wait until it ends.
   The same for an erasure request.
3. Print what was found, exported, erased and retained per collection, where
   the bundle is, and how to open the Temporal UI (:mod:`workers.demo_report`).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from workers.config import ConfigError, Settings
from workers.demo_report import (
    Check,
    DemoRun,
    customer_rows_clean,
    print_checks,
    print_summary,
    request_checks,
    temporal_db_clean,
)
from workers.dev import DevStack
from workers.embedded import with_database
from workers.logs import configure_logging
from workflows.models import TERMINAL_STEPS

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_SQL = DEMO_DIR / "postgres_sample.sql"
# The operational switches the other rights need, which Fides' example lacks (see [systems.appdb.*] in the config).
DEMO_RIGHTS_SQL = """
ALTER TABLE customer ADD COLUMN marketing_opt_in boolean NOT NULL DEFAULT true,
                     ADD COLUMN active boolean NOT NULL DEFAULT true,
                     ADD COLUMN processing_restricted boolean NOT NULL DEFAULT false;
"""
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
        await conn.execute(DEMO_RIGHTS_SQL)
    finally:
        await conn.close()
    return url


async def subject_customer_ids(url: str) -> list[int]:
    """Ids of the subject's customer rows, read before anything is erased."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id FROM customer WHERE lower(email) = lower($1) ORDER BY id", SUBJECT_EMAIL)
    finally:
        await conn.close()
    return [int(r["id"]) for r in rows]


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
            run.checks.append(await customer_rows_clean(
                run.appdb_url, run.subject_customer_ids, email=SUBJECT_EMAIL, database=DEMO_DATABASE
            ))
        print_summary(run, stack, settings)
        if stay:
            print(f"\nThe stack keeps running: API {stack.api_url}, Temporal UI {stack.ui_url}. Ctrl-C to stop.")
            await stack.wait()
    # Temporal has stopped: its SQLite file and WAL are complete.
    run.checks.append(temporal_db_clean(stack.state_dir, email=SUBJECT_EMAIL))
    return print_checks(run.checks)
