"""The conformance kit on the manual-task connector, with the orchestrator's ``task_confirmations`` attached.

A person completes the erasure (``ErasureOutcome.external``): ``complete_external`` records their confirmation in
the orchestrator database (as the partner wait does), so that ``verify_erasure`` then reports nothing remaining.
Only a person can tell what the system holds: ``locate`` reports ``{"manual": 1}`` for anyone (``may_hold_anyone``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest_asyncio

from activities.confirmations import TaskConfirmations
from activities.db import create_pool
from connectors.conformance import SYSTEM_NAME, ConnectorConformance
from connectors.contract import Connector, ErasureOutcome, Subject
from connectors.registry import build_connector
from connectors.testing import MemoryPlanStore

OPTIONS = {"instructions": "Delete the customer from the print shop's mailing list.", "contact": "shop@example.com"}


class TestManualTaskConformance(ConnectorConformance):
    connector_type = "manual_task"
    may_hold_anyone = True

    @pytest_asyncio.fixture
    async def pool(self, orchestrator_db: str) -> AsyncIterator[asyncpg.Pool]:
        pool = await create_pool(orchestrator_db)
        yield pool
        await pool.close()

    @pytest_asyncio.fixture
    async def confirmations(self, pool: asyncpg.Pool) -> TaskConfirmations:
        self.confirmations = TaskConfirmations(pool)  # for complete_external
        return self.confirmations

    @pytest_asyncio.fixture
    async def connector_options(self) -> dict[str, Any]:
        return dict(OPTIONS)

    @pytest_asyncio.fixture
    async def connector(self, connector_options: dict[str, Any],
                        confirmations: TaskConfirmations) -> AsyncIterator[Connector]:
        """Built through the registry with the task confirmations attached, as the orchestrator does."""
        conn = build_connector(SYSTEM_NAME, self.connector_type, connector_options)
        conn.attach({"task_confirmations": confirmations})
        await conn.open()
        try:
            yield conn
        finally:
            await conn.close()

    @pytest_asyncio.fixture
    async def seeded_subject(self) -> Subject:
        return Subject(request_id="conformance", identities={"email": "jane@example.com"})

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        return Subject(request_id="conformance-absent", identities={"email": "nobody@example.com"})

    @pytest_asyncio.fixture
    async def bad_options(self) -> list[dict[str, Any]]:
        return [
            {},
            {"instructions": ""},
            {"instructions": "   "},
            {"instructions": "x" * 4001},
            {**OPTIONS, "contact": "x" * 401},
            {**OPTIONS, "remind_after_days": 0},
            {**OPTIONS, "timeout_days": 0},
        ]

    async def complete_external(self, connector: Connector, subject: Subject, outcome: ErasureOutcome) -> None:
        """A person confirms the task (recorded as the partner wait records it)."""
        assert outcome.external is not None
        if not await self.confirmations.confirmed(subject.request_id, SYSTEM_NAME):  # pending until confirmed
            assert (await connector.verify_erasure(subject, MemoryPlanStore())).remaining == {"manual": 1}
        await self.confirmations.confirm(subject.request_id, SYSTEM_NAME, "conformance-admin", datetime.now(UTC))


async def test_a_bare_connector_never_verifies() -> None:
    """Without the orchestrator's task confirmations attached, ``{"manual": 1}`` always remains."""
    conn = build_connector(SYSTEM_NAME, "manual_task", OPTIONS)
    subject = Subject(request_id="conformance", identities={"email": "jane@example.com"})
    assert (await conn.verify_erasure(subject, MemoryPlanStore())).remaining == {"manual": 1}
