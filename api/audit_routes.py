"""``GET /v1/requests/{id}/audit``: a request's audit records, from the orchestrator's ``dsr_audit`` table.

For an admin (their own tenant's requests), a privacy officer and an auditor. The records hold no
personal data (references, counts, outcomes, the configured names of actors: activities/audit.py), and
are answered as they are stored, oldest first.

The API reads the orchestrator's database through an optional pool (:class:`OrchestratorDatabase`),
created on first use from the configured URL (``DATABASE_URL`` or ``database_url``); without one the
route answers 503. The trail outlives the workflow (Temporal's retention is shorter than the evidence's):
records are answered even when Temporal no longer knows the request. A request with no record yet
answers an empty list if its workflow exists, 404 otherwise (as for another tenant's request).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from api.auth import require_role
from api.common import CLIENT, REQUEST_ID, find_for_tenant
from api.problems import Problem
from api.requests_routes import REQUESTS

MAX_RECORDS = 5000


class OrchestratorDatabase:
    """The API's optional connection pool on the orchestrator's database.

    Args:
        url: The database URL; None when none is configured (the audit route then answers 503).
        pool: A pool to use instead of creating one (it is not closed by :meth:`close`).
    """

    def __init__(self, url: str | None, pool: asyncpg.Pool | None = None) -> None:
        self.url = url
        self._pool = pool
        self._own = pool is None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        """Whether there is a database to read."""
        return self._pool is not None or self.url is not None

    async def pool(self) -> asyncpg.Pool:
        """The pool, created on first use.

        Raises:
            Problem: 503 when no database is configured or it cannot be reached.
        """
        if self._pool is not None:
            return self._pool
        if self.url is None:
            raise _unavailable("no orchestrator database is configured; audit records cannot be read")
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(self.url, min_size=0, max_size=4, init=_init_connection)
                except (TimeoutError, OSError, asyncpg.PostgresError):
                    raise _unavailable("the orchestrator database cannot be reached now; try again") from None
        return self._pool

    async def close(self) -> None:
        """Close the pool if this object created it."""
        if self._own and self._pool is not None:
            await self._pool.close()
            self._pool = None


DATABASE = web.AppKey("orchestrator_database", OrchestratorDatabase)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _unavailable(detail: str) -> Problem:
    return Problem(503, detail, slug="audit-unavailable", title="Audit trail unavailable",
                   headers={"Retry-After": "30"})


class AuditRecord(BaseModel):
    """One audit record (no personal data)."""

    event: str
    system: str | None
    outcome: str
    actor: str | None = Field(description="The configured name of the token or user who acted, if a person did.")
    detail: dict[str, Any]
    at: datetime
    tenant: str


class AuditTrail(BaseModel):
    """The answer of ``GET /v1/requests/{id}/audit``."""

    request_id: str
    records: list[AuditRecord]


async def get_audit(request: web.Request) -> web.Response:
    """``GET /v1/requests/{id}/audit``: the request's audit records, oldest first (see the module docstring)."""
    principal = require_role(request, "admin", "privacy_officer", "auditor")
    request_id = request.match_info["id"]
    if not REQUESTS.id_pattern.fullmatch(request_id):
        raise REQUESTS.not_found()
    request[REQUEST_ID] = request_id
    pool = await request.app[DATABASE].pool()
    try:
        rows = await pool.fetch(
            """SELECT event, system, outcome, actor, detail, at, tenant FROM dsr_audit
               WHERE request_id = $1 AND ($2::text IS NULL OR tenant = $2) ORDER BY id LIMIT $3""",
            request_id, principal.tenant, MAX_RECORDS,
        )
    except asyncpg.UndefinedTableError:
        rows = []  # no worker has written to this database yet
    except (TimeoutError, OSError, asyncpg.PostgresConnectionError):
        raise _unavailable("the orchestrator database cannot be reached now; try again") from None
    if not rows:
        await find_for_tenant(request.app[CLIENT], REQUESTS, request_id, principal.tenant)  # 404 unless it exists
    trail = AuditTrail(request_id=request_id, records=[AuditRecord(**dict(r)) for r in rows])
    return web.json_response(trail.model_dump(mode="json"))
