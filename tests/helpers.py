"""Helpers shared by tests: a settings object for Fides' example and a running worker."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.client import Client

from workers.config import ApiSettings, ApiToken, ExportSettings, Settings, SystemSettings, TenantSettings
from workers.worker import request_worker
from workflows.models import DsrRequest, RequestKind, SubjectIdentities

DEMO = Path(__file__).resolve().parent.parent / "workers" / "demo"
HASH_SECRET_ENV = "DSR_TEST_HASH_SECRET"

FIDES_POLICY: dict[str, Any] = {
    "default_strategy": "null_rewrite",
    "rules": [
        {"categories": ["user.contact.email"], "strategy": "hash"},
        {"categories": ["user.name"], "strategy": "string_rewrite", "rewrite_value": "REDACTED"},
        {"categories": ["user.sensor"], "strategy": "delete_row"},
    ],
    "retain": [{"collection": "orders", "ground": "Tax law: order records kept 10 years"}],
}


RIGHTS_OPTIONS: dict[str, Any] = {
    "restriction": {"table": "dsr_restriction", "flag_column": "processing_restricted"},
    "purposes": {"marketing": {"collection": "customer", "field": "marketing_opt_in", "value": False}},
    "deactivation": {"collection": "customer", "field": "active", "value": False},
}


async def add_rights_columns(db_url: str) -> None:
    """The operational flags the rights need, which Fides' example lacks."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("""ALTER TABLE customer ADD COLUMN marketing_opt_in boolean DEFAULT true,
                                                   ADD COLUMN active boolean DEFAULT true,
                                                   ADD COLUMN processing_restricted boolean DEFAULT false""")
    finally:
        await conn.close()


def fides_settings(app_db_url: str, tmp_path: Path, *, rights: bool = False,
                   **overrides: Any) -> Settings:
    """Settings with one Postgres system (Fides' example) and a tenant 'acme' that needs approval.

    ``rights`` adds the restriction, purposes and deactivation options (call ``add_rights_columns`` first);
    Notifications go to the session's SMTP sink (``smtp_sink`` in conftest sets ``DSR_NOTIFY__SMTP_PORT``).
    """
    system = SystemSettings(
        type="postgres",
        dsn=app_db_url,
        dataset=str(DEMO / "postgres_example_test_dataset.yml"),
        hash_secret_env=HASH_SECRET_ENV,
        policy=FIDES_POLICY,
        **(RIGHTS_OPTIONS if rights else {}),
    )
    return Settings(
        state_dir=tmp_path / "state",
        export=ExportSettings(path=tmp_path / "exports"),
        tenants={"acme": TenantSettings(admin_email="admin@acme.example", privacy_office_email="dpo@acme.example")},
        systems={"appdb": system},
        **overrides,
    )


def api_settings(tokens: list[ApiToken]) -> ApiSettings:
    """API settings with the tokens and an API secret of their own.

    The secret keys the subject key, so each test talks to its own subject coordinators: one left by
    another test sits on that test's task queue, which no worker polls any more.
    """
    secret_env = "DSR_TEST_API_SECRET_" + uuid.uuid4().hex[:8].upper()
    os.environ[secret_env] = uuid.uuid4().hex
    return ApiSettings(tokens=tokens, secret_env=secret_env)


def new_request(kind: RequestKind, email: str = "jane@example.com", *, approval: bool = True,
                received_at: datetime | None = None, **fields: Any) -> DsrRequest:
    """A request with a fresh opaque id; ``fields`` set any other DsrRequest field (details, policy, ...)."""
    return DsrRequest(
        id="req_" + uuid.uuid4().hex,
        tenant="acme",
        kind=kind,
        identities=SubjectIdentities(email=email),
        approval_required=approval,
        received_at=received_at or datetime.now(UTC),
        **fields,
    )


@asynccontextmanager
async def running_worker(settings: Settings, client: Client, database_url: str) -> AsyncIterator[str]:
    """Run the real worker on a fresh task queue; yields the queue's name."""
    queue = "test-" + uuid.uuid4().hex[:12]
    async with request_worker(settings, client, database_url=database_url, task_queue=queue) as worker, worker:
        yield queue
