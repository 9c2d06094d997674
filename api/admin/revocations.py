"""Console sign-outs shared by every API replica, through the orchestrator's database.

A session cookie is valid until it expires (:mod:`api.admin.session`); signing out revokes its session id.
With one API process the revocation held in memory is enough; behind a load balancer the other replicas must
refuse the cookie too. So a sign-out also writes the session id's SHA-256 (never the id, never a name) to the
table ``dsr_console_revocation``, and every replica reads the table's live rows every
:data:`REFRESH_SECONDS`: a revoked cookie is refused everywhere within that time, and at once where it was
signed out. Rows are deleted once their session would have expired anyway.

Without an orchestrator database (``DATABASE_URL``) revocations stay in the process, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import structlog
from aiohttp import web

from api.admin.session import Session, SessionKeys, revocation_key
from api.audit_routes import DATABASE
from api.problems import Problem

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 2.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS dsr_console_revocation (
    session_sha256 text PRIMARY KEY,
    expires_at timestamptz NOT NULL
)
"""


async def publish_revocation(app: web.Application, session: Session) -> bool:
    """Record a sign-out for the other replicas; False when it could only be revoked in this process."""
    database = app[DATABASE]
    if not database.configured:
        return False
    try:
        pool = await database.pool()
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
            await conn.execute(
                "INSERT INTO dsr_console_revocation (session_sha256, expires_at) VALUES ($1, $2) "
                "ON CONFLICT (session_sha256) DO NOTHING",
                revocation_key(session.session_id), datetime.fromtimestamp(session.expires_at, UTC))
    except (Problem, OSError, TimeoutError, asyncpg.PostgresError) as exc:
        log.warning("admin.revocation_not_shared", error_type=type(exc).__name__)
        return False
    return True


async def _refresh(pool: asyncpg.Pool, keys: SessionKeys) -> None:
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
        await conn.execute("DELETE FROM dsr_console_revocation WHERE expires_at <= now()")
        rows = await conn.fetch("SELECT session_sha256, expires_at FROM dsr_console_revocation")
    keys.merge_revoked({r["session_sha256"]: int(r["expires_at"].timestamp()) for r in rows})


async def revocation_sync(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: read the shared revocations every :data:`REFRESH_SECONDS` while the app runs."""
    from api.admin.views import KEYS

    database = app[DATABASE]
    if not database.configured:
        yield
        return

    async def loop() -> None:
        failing = False
        while True:
            try:
                await _refresh(await database.pool(), app[KEYS])
                failing = False
            except (Problem, OSError, TimeoutError, asyncpg.PostgresError) as exc:
                if not failing:  # once per outage, not every few seconds
                    log.warning("admin.revocations_unreadable", error_type=type(exc).__name__)
                failing = True
            await asyncio.sleep(REFRESH_SECONDS)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
