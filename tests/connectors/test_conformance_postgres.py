"""The conformance kit on the Postgres connector, over a fresh copy of Fides' example per test.

Every right is configured (restriction with a flag column, deactivation), so every test of
the kit runs; stop_processing is configured too, rectification comes with the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from connectors.conformance import ConnectorConformance
from connectors.contract import Connector, Subject
from tests.connectors.conftest import DATASET, EXAMPLE_POLICY, SECRET, dump

SWITCHES = (
    "ALTER TABLE customer ADD COLUMN marketing_opt_in boolean DEFAULT true, "
    "ADD COLUMN active boolean DEFAULT true, ADD COLUMN processing_restricted boolean DEFAULT false"
)


class TestPostgresConformance(ConnectorConformance):
    connector_type = "postgres"

    @pytest_asyncio.fixture
    async def connector_options(self, fides_db: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        conn = await asyncpg.connect(fides_db)
        try:
            await conn.execute(SWITCHES)
        finally:
            await conn.close()
        monkeypatch.setenv("CONFORMANCE_HASH_SECRET", SECRET)
        self.dsn = fides_db
        return {
            "dsn": fides_db,
            "dataset": str(DATASET),
            "hash_secret_env": "CONFORMANCE_HASH_SECRET",
            "policy": EXAMPLE_POLICY,
            "restriction": {"flag_column": "processing_restricted"},
            "deactivation": {"collection": "customer", "field": "active", "value": False},
            "purposes": {"marketing": {"collection": "customer", "field": "marketing_opt_in", "value": False}},
        }

    @pytest_asyncio.fixture
    async def seeded_subject(self) -> Subject:
        return Subject(request_id="conformance", identities={"email": "jane@example.com"})

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        return Subject(request_id="conformance", identities={"email": "nobody@example.com"})

    @pytest_asyncio.fixture
    async def bad_options(self, connector_options: Mapping[str, Any]) -> list[dict[str, Any]]:
        good = dict(connector_options)
        without_dsn = {k: v for k, v in good.items() if k != "dsn"}
        return [
            without_dsn,
            {**without_dsn, "dsn_env": "CONFORMANCE_UNSET_DSN"},
            {**good, "dataset": str(DATASET.parent / "no-such-dataset.yml")},
            {**good, "batch_size": 0},
            {**good, "restriction": "customer"},
            {**good, "deactivation": {"collection": "customer", "field": "no_such_column", "value": False}},
        ]

    async def observe(self, connector: Connector, subject: Subject) -> Any:
        """The kit's view plus every non-empty table of the database, row for row."""
        conn = await asyncpg.connect(self.dsn)
        try:
            tables = {t: rows for t, rows in (await dump(conn)).items() if rows}
        finally:
            await conn.close()
        return {**await super().observe(connector, subject), "database": tables}
