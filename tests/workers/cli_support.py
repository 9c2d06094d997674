"""Shared by the CLI tests: the API with the real worker on a real port, and ``dsr`` run as a subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestServer

from api.app import create_app
from tests.conftest import tool
from tests.helpers import HASH_SECRET_ENV, api_settings, fides_settings
from workers.config import ApiToken, Settings, TemporalSettings
from workers.worker import request_worker

PORTAL = "cli-portal-" + uuid.uuid4().hex
ADMIN = "cli-admin-" + uuid.uuid4().hex
EMAIL = "jane@example.com"  # Fides' example customer 3


@dataclass
class Run:
    """One ``dsr`` invocation's outcome."""

    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@dataclass
class Cli:
    """Runs ``dsr`` against the test API."""

    api_url: str
    settings: Settings | None = None

    async def __call__(self, *args: str, token: str | None = ADMIN) -> Run:
        env = {k: v for k, v in os.environ.items() if k not in ("DSR_API_TOKEN", "DSR_API_URL", "DSR_CONFIG")}
        if token is not None:
            env["DSR_API_TOKEN"] = token
        proc = await asyncio.create_subprocess_exec(
            tool("dsr"), *args, "--api-url", self.api_url, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())


def _token(name: str, secret: str, role: str) -> ApiToken:
    return ApiToken(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), role=role, tenant="acme")


@pytest.fixture
async def cli(temporal_env, fides_db, orchestrator_db, tmp_path, monkeypatch) -> AsyncIterator[Cli]:
    """The API with the real worker on a real port, and a way to run ``dsr`` against it."""
    monkeypatch.setenv(HASH_SECRET_ENV, "cli-secret")
    settings = fides_settings(
        fides_db, tmp_path,
        temporal=TemporalSettings(task_queue="cli-" + uuid.uuid4().hex[:8]),
        api=api_settings([_token("cli-portal", PORTAL, "portal"), _token("cli-admin", ADMIN, "admin")]),
    )
    server = TestServer(create_app(settings, temporal_env.client), host="127.0.0.1")
    async with request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker, worker:
        await server.start_server()
        try:
            yield Cli(f"http://127.0.0.1:{server.port}", settings)
        finally:
            await server.close()


def assert_one_line_error(run: Run, code: int) -> str:
    """A failed command: its status, one line on stderr, no traceback."""
    assert run.code == code, (run.code, run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsr: "), run.err
    assert "Traceback" not in run.err
    return lines[0]


async def wait_for_step(cli: Cli, request_id: str, step: str) -> dict:
    """``dsr request show`` until the request is at ``step``."""
    for _ in range(100):
        status = (await cli("request", "show", request_id, "--json")).json()
        if status["step"] == step:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} is {status['step']}, not {step}")
