"""Helpers for the API tests: tokens, settings, stub activities and assertions."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.app import create_app
from api.problems import PROBLEM_JSON
from workers.config import ApiSettings, ApiToken, Settings, TemporalSettings, TenantSettings
from workflows.models import AuditEvent, RequestKind, RequestStatus, Step, SystemInfo

# name -> (role, tenant); "initech" has a token but no tenant configuration.
TOKENS: dict[str, tuple[str, str]] = {
    "portal-acme": ("portal", "acme"),
    "portal-globex": ("portal", "globex"),
    "portal-initech": ("portal", "initech"),
    "admin-acme": ("admin", "acme"),
    "admin-globex": ("admin", "globex"),
}


def raw_token(name: str) -> str:
    """The secret a caller presents for token ``name``."""
    return f"tok-{name}-7c1f0e9a"


def auth(name: str) -> dict[str, str]:
    """The Authorization header of token ``name``."""
    return {"Authorization": f"Bearer {raw_token(name)}"}


def make_settings(task_queue: str, state_dir: Path) -> Settings:
    """Settings with tenants acme (approval for every kind) and globex (approval for erasure only)."""
    return Settings(
        state_dir=state_dir,
        temporal=TemporalSettings(task_queue=task_queue),
        api=ApiSettings(
            tokens=[
                ApiToken(name=name, sha256=hashlib.sha256(raw_token(name).encode()).hexdigest(), role=role,
                         tenant=tenant)
                for name, (role, tenant) in TOKENS.items()
            ]
        ),
        tenants={
            "acme": TenantSettings(),
            "globex": TenantSettings(approval_required=[RequestKind.ERASURE]),
        },
    )


# --- stub activities -----------------------------------------------------------------------

# Tenants whose "dsr.list_systems" blocks until the test releases it (to catch a workflow mid-run).
LIST_SYSTEMS_GATES: dict[str, asyncio.Event] = {}


@activity.defn(name="dsr.record_event")
async def record_event(event: AuditEvent) -> None:
    """Stub: audit events are dropped."""
    return None


@activity.defn(name="dsr.list_systems")
async def list_systems(tenant: str) -> list[SystemInfo]:
    """Stub: no system is configured (after the tenant's gate opens, if it has one)."""
    gate = LIST_SYSTEMS_GATES.get(tenant)
    if gate is not None:
        await gate.wait()
    return []


@asynccontextmanager
async def api_client(settings: Settings, client: Client, app_hook: Any = None) -> AsyncIterator[TestClient]:
    """A test client for a fresh application; ``app_hook(app)`` may add routes before it starts."""
    app = create_app(settings, client)
    if app_hook is not None:
        app_hook(app)
    async with TestClient(TestServer(app)) as tc:
        yield tc


# --- helpers -------------------------------------------------------------------------------

PROBLEM_MEMBERS = ("type", "title", "status", "detail", "instance")


async def assert_problem(resp: Any, status: int) -> dict[str, Any]:
    """Assert ``resp`` is an RFC 9457 problem with ``status``; return the document."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM_JSON, (resp.content_type, text)
    doc = await resp.json(content_type=None)
    for member in PROBLEM_MEMBERS:
        assert member in doc, (member, doc)
    assert doc["status"] == status
    assert doc["instance"].startswith("urn:uuid:")  # identifies the occurrence, echoes nothing
    assert isinstance(doc["title"], str) and doc["title"]
    assert isinstance(doc["detail"], str) and doc["detail"]
    return doc


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    """Whether Temporal knows a workflow ``workflow_id``."""
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND
        return False
    return True


async def wait_for_step(handle: WorkflowHandle[Any, Any], *steps: Step, timeout: float = 15.0) -> RequestStatus:
    """Query ``handle`` until its step is one of ``steps``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await handle.query("status", result_type=RequestStatus)
        if status.step in steps:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"step is {status.step}, expected one of {steps}")
        await asyncio.sleep(0.05)
