"""Helpers for the API tests: tokens, settings, bodies, stub activities and assertions."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.app import SECRETS, create_app
from api.ids import idempotent_dispute_id, idempotent_request_id
from api.problems import PROBLEM_JSON
from workers.codec import ENCODING
from workers.config import ApiSettings, ApiToken, Settings, TemporalSettings, TenantSettings
from workflows.messages import Notification, NotificationResult
from workflows.models import RequestKind, RequestStatus
from workflows.tasks import AuditEvent, SystemInfo

M = TypeVar("M", bound=BaseModel)
EMAIL = "jane.doe@example.com"

# name -> (role, tenant); "initech" has a token but no tenant configuration.
TOKENS: dict[str, tuple[str, str]] = {
    "portal-acme": ("portal", "acme"),
    "portal-globex": ("portal", "globex"),
    "portal-initech": ("portal", "initech"),
    "admin-acme": ("admin", "acme"),
    "admin-globex": ("admin", "globex"),
}
# Roles that read every tenant (tenant None), and a privacy officer limited to one tenant.
READER_TOKENS: dict[str, tuple[str, str | None]] = {
    "officer": ("privacy_officer", None),
    "officer-acme": ("privacy_officer", "acme"),
    "auditor": ("auditor", None),
}


def raw_token(name: str) -> str:
    """The secret a caller presents for token ``name``."""
    return f"tok-{name}-7c1f0e9a"


def auth(name: str) -> dict[str, str]:
    """The Authorization header of token ``name``."""
    return {"Authorization": f"Bearer {raw_token(name)}"}


# acme's policy, with values other than the defaults so that copying them into a request shows.
ACME_POLICY = TenantSettings(
    approval_required=list(RequestKind),
    objection_window_days=5,
    reminder_every_days=2,
    escalate_days_before_due=4,
    verification_timeout_days=10,
    dispute_notice_days=21,
)


def make_settings(task_queue: str, state_dir: Path) -> Settings:
    """Settings with tenants acme (approval for every kind) and globex (approval for erasure only;
    its accounts are organisation-managed, so a restriction opens the administrator's objection window)."""
    # Each settings object gets its own API secret, hence its own subject keys: a subject coordinator left
    # running by another module sits on that module's task queue, which no worker polls any more.
    secret_env = "DSR_TEST_API_SECRET_" + uuid.uuid4().hex[:8].upper()
    os.environ[secret_env] = uuid.uuid4().hex
    return Settings(
        state_dir=state_dir,
        temporal=TemporalSettings(task_queue=task_queue),
        api=ApiSettings(
            secret_env=secret_env,
            tokens=[
                ApiToken(name=name, sha256=hashlib.sha256(raw_token(name).encode()).hexdigest(), role=role,
                         tenant=tenant)
                for name, (role, tenant) in {**TOKENS, **READER_TOKENS}.items()
            ]
        ),
        tenants={
            "acme": ACME_POLICY,
            "globex": TenantSettings(approval_required=[RequestKind.ERASURE], organisation_managed=True),
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


@activity.defn(name="dsr.notify")
async def notify(note: Notification) -> NotificationResult:
    """Stub: nobody is told."""
    return NotificationResult(sent=False, skipped_reason="test stub")


STUB_ACTIVITIES = [record_event, list_systems, notify]


@asynccontextmanager
async def api_client(settings: Settings, client: Client, app_hook: Any = None) -> AsyncIterator[TestClient]:
    """A test client for a fresh application; ``app_hook(app)`` may add routes before it starts."""
    app = create_app(settings, client)
    if app_hook is not None:
        app_hook(app)
    async with TestClient(TestServer(app)) as tc:
        yield tc


# --- bodies and ids -------------------------------------------------------------------------


def body(kind: str = "access", **extra: Any) -> dict[str, Any]:
    """A valid create body (plus or overriding ``extra``)."""
    return {"kind": kind, "identities": {"email": EMAIL, "user_id": "u-1001"}, **extra}


def dispute_body(**extra: Any) -> dict[str, Any]:
    """A valid dispute body (plus or overriding ``extra``)."""
    return {"identities": {"email": EMAIL}, "grounds": "the subject contests the accuracy of their data", **extra}


def key() -> str:
    """A fresh Idempotency-Key."""
    return f"portal-submit-{uuid.uuid4()}"


def expected_id(tc: Any, tenant: str, idempotency_key: str) -> str:
    """The request id the API derives for ``idempotency_key`` from ``tenant``."""
    return idempotent_request_id(tc.server.app[SECRETS], tenant, idempotency_key)


def expected_dispute_id(tc: Any, tenant: str, idempotency_key: str) -> str:
    """The dispute id the API derives for ``idempotency_key`` from ``tenant``."""
    return idempotent_dispute_id(tc.server.app[SECRETS], tenant, idempotency_key)


async def create(tc: Any, token: str = "portal-acme", kind: str = "access", **extra: Any) -> str:
    """Create a request through the API; its id."""
    resp = await tc.post("/v1/requests", json=body(kind=kind, **extra), headers=auth(token))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


# --- assertions ------------------------------------------------------------------------------

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


# --- Temporal ----------------------------------------------------------------------------------


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    """Whether Temporal knows a workflow ``workflow_id``."""
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND
        return False
    return True


async def started_input(client: Client, workflow_id: str, model: type[M]) -> M:
    """The (decoded) input a workflow was started with; asserts it is sealed by the codec."""
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        started = event.workflow_execution_started_event_attributes
        [payload] = started.input.payloads
        assert payload.metadata["encoding"] == ENCODING
        assert EMAIL.encode() not in payload.data
        [value] = await client.data_converter.decode(list(started.input.payloads), [model])
        return value
    raise AssertionError(f"{workflow_id} has no history")


async def wait_for_step(handle: WorkflowHandle[Any, Any], *steps: Any, timeout: float = 15.0,
                        status_type: type[Any] = RequestStatus) -> Any:
    """Query ``handle`` until its step is one of ``steps`` (a request's, or another ``status_type``'s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await handle.query("status", result_type=status_type)
        if status.step in steps:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"step is {status.step}, expected one of {steps}")
        await asyncio.sleep(0.05)
