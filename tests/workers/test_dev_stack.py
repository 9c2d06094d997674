"""The embedded stack: Temporal, PostgreSQL, the worker and the API start, stop, and start again on the same state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import WorkflowExecutionStatus

from workers.config import ApiSettings, Settings, TemporalSettings, TenantSettings
from workers.dev import EMBEDDED_URL_ENV, DevStack, DevStackError, port_is_free
from workflows.models import DsrRequest, RequestKind, RequestStatus, Step, SubjectIdentities

SUBJECT = "dev-stack-subject@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_settings(state_dir: Path) -> Settings:
    """Demo-like settings on free ports, with no system configured."""
    return Settings(
        state_dir=state_dir,
        temporal=TemporalSettings(address=f"127.0.0.1:{free_port()}", ui_port=free_port(),
                                  task_queue=f"dev-stack-{uuid.uuid4().hex[:8]}"),
        api=ApiSettings(port=free_port()),
        tenants={"acme": TenantSettings()},
    )


async def status_of(stack: DevStack, request_id: str) -> RequestStatus:
    assert stack.client is not None
    return await stack.client.get_workflow_handle(request_id).query("status", result_type=RequestStatus)


async def wait_for_step(stack: DevStack, request_id: str, step: Step) -> RequestStatus:
    for _ in range(200):
        status = await status_of(stack, request_id)
        if status.step == step:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"request never reached {step}: {status.step}")


async def test_dev_stack_starts_stops_and_resumes_on_the_same_state(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv(EMBEDDED_URL_ENV, raising=False)
    settings = stack_settings(tmp_path / "state")
    request = DsrRequest(
        id=f"devstack-{uuid.uuid4().hex[:12]}",
        tenant="acme",
        kind=RequestKind.ACCESS,
        identities=SubjectIdentities(email=SUBJECT),
        approval_required=True,
        received_at=datetime.now(UTC),
    )

    async with DevStack(settings) as stack:
        assert stack.client is not None
        info = await stack.client.workflow_service.get_system_info(GetSystemInfoRequest())
        assert info.server_version
        async with aiohttp.ClientSession() as http, http.get(f"{stack.api_url}/healthz") as resp:
            assert resp.status == 200
        # The orchestrator's database exists on the embedded server, whose URL child code can read.
        assert os.environ[EMBEDDED_URL_ENV] == stack.admin_database_url
        conn = await asyncpg.connect(stack.orchestrator_database_url)
        assert await conn.fetchval("select current_database()") == "dsr"
        await conn.close()

        await stack.client.start_workflow(
            "DataSubjectRequestWorkflow", request, id=request.id, task_queue=settings.temporal.task_queue
        )
        first = await wait_for_step(stack, request.id, Step.AWAITING_APPROVAL)
        stack.check_services()

    # Everything stopped: the ports are free again, nothing left behind.
    assert port_is_free(int(settings.temporal.address.rsplit(":", 1)[1]))
    assert port_is_free(settings.api.port)
    assert EMBEDDED_URL_ENV not in os.environ
    assert not (settings.state_dir / "temporal.pid").exists()
    assert (settings.state_dir / "temporal.db").exists()

    async with DevStack(settings) as stack:
        assert stack.client is not None
        description = await stack.client.get_workflow_handle(request.id).describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        again = await status_of(stack, request.id)
        assert again.step == Step.AWAITING_APPROVAL
        assert again.due_at == first.due_at

    # The codec kept the subject out of Temporal's SQLite history.
    for f in settings.state_dir.glob("temporal.db*"):
        assert SUBJECT.encode() not in f.read_bytes()


async def test_a_taken_port_is_one_clear_error(tmp_path):
    settings = stack_settings(tmp_path / "state")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.api.port))
        holder.listen()
        with pytest.raises(DevStackError, match=rf"port {settings.api.port} \(HTTP API\).*already in use"):
            async with DevStack(settings):
                pass
    assert not (settings.state_dir / "temporal.pid").exists()


def test_dev_stack_refuses_a_remote_temporal(tmp_path):
    settings = Settings(state_dir=tmp_path, temporal=TemporalSettings(address="temporal.example.com:7233"))
    with pytest.raises(DevStackError, match="runs its own Temporal"):
        DevStack(settings)


# --- `dsr dev` as the operator runs it: crash, start again, Ctrl-C ---------------------------


def write_config(path: Path) -> Path:
    path.write_text(
        'state_dir = "state"\n'
        f'[temporal]\naddress = "127.0.0.1:{free_port()}"\nui_port = {free_port()}\n'
        f'task_queue = "dev-cli-{uuid.uuid4().hex[:8]}"\n'
        f"[api]\nport = {free_port()}\n"
        "[tenants.acme]\n"
    )
    return path


async def start_dsr_dev(config: Path, stderr: Path) -> tuple[asyncio.subprocess.Process, str]:
    """``dsr dev`` in its own session (as from a terminal); returns once it says it is running."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "dsr"), "--config", str(config), "dev",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr.open("ab"),
        start_new_session=True,
    )
    seen = ""
    async with asyncio.timeout(60):
        while "Press Ctrl-C" not in seen:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"dsr dev exited early ({await proc.wait()}): {stderr.read_text()}")
            seen += line.decode()
    return proc, seen


def kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_dsr_dev_after_a_crash_resumes_and_stops_on_ctrl_c(tmp_path, monkeypatch):
    from workers.config import load_settings
    from workers.temporal import connect

    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = write_config(tmp_path / "dsr.toml")
    settings = load_settings(config)
    stderr = tmp_path / "dsr.stderr"
    request = DsrRequest(
        id=f"devcli-{uuid.uuid4().hex[:12]}", tenant="acme", kind=RequestKind.ERASURE,
        identities=SubjectIdentities(email=SUBJECT), approval_required=True, received_at=datetime.now(UTC),
    )
    first = second = None
    try:
        first, banner = await start_dsr_dev(config, stderr)
        assert f"http://127.0.0.1:{settings.api.port}" in banner
        assert f"http://127.0.0.1:{settings.temporal.ui_port}" in banner
        client = await connect(settings)
        await client.start_workflow(
            "DataSubjectRequestWorkflow", request, id=request.id, task_queue=settings.temporal.task_queue
        )
        handle = client.get_workflow_handle(request.id)
        for _ in range(200):
            if (await handle.query("status", result_type=RequestStatus)).step == Step.AWAITING_APPROVAL:
                break
            await asyncio.sleep(0.1)
        leftover = int((settings.state_dir / "temporal.pid").read_text())

        first.kill()  # a crash: the Temporal server and PostgreSQL are left running
        await first.wait()
        assert pid_alive(leftover)

        second, _ = await start_dsr_dev(config, stderr)
        assert "left running by an earlier run" in stderr.read_text()
        assert not pid_alive(leftover)
        client = await connect(settings)
        handle = client.get_workflow_handle(request.id)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        assert (await handle.query("status", result_type=RequestStatus)).step == Step.AWAITING_APPROVAL

        os.killpg(second.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole process group
        async with asyncio.timeout(45):
            assert await second.wait() == 0, stderr.read_text()
        assert not (settings.state_dir / "temporal.pid").exists()
        assert not (settings.state_dir / "pg" / "postmaster.pid").exists()
        assert port_is_free(settings.api.port)
        print(stderr.read_text())
    finally:
        for proc in (first, second):
            if proc is not None:
                kill_group(proc)


# --- `dsr demo` (make demo) on free ports and a temporary state folder ----------------------


async def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    from workers import demo
    from workers.config import load_settings

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DSR_DEMO_APPDB_URL", raising=False)
    monkeypatch.delenv("DSR_DEMO_HASH_SECRET", raising=False)
    monkeypatch.setattr(demo, "REQUEST_TIMEOUT", 60.0)
    base = load_settings(demo.DEMO_DIR / "dsr.demo.toml")
    settings = base.model_copy(update={
        "state_dir": tmp_path / "state",
        "temporal": base.temporal.model_copy(update={"address": f"127.0.0.1:{free_port()}",
                                                      "ui_port": free_port()}),
        "api": base.api.model_copy(update={"port": free_port()}),
    })

    code = await demo.run_demo(settings)

    out = capsys.readouterr().out
    assert code == 0, out
    assert "Demo passed." in out
    assert "[FAIL]" not in out
    assert "retained orders" in out and "HGB §257" in out
    assert out.count(demo.SUBJECT_EMAIL) == 1  # only the line naming whose request it is
