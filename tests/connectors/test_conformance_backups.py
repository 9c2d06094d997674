"""The conformance kit on the backup-store connector, against moto's S3 server, with the ledger in PostgreSQL.

Every backup "may hold" anyone (``may_hold_anyone``); an erasure tags the backups and completes when the
newest expires, which ``complete_erasure`` brings about by moving the connector's clock past it, so that
verification finds them expired and (``delete_expired``) deletes them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import boto3
import pytest_asyncio

from activities.ledger import ErasureLedger
from connectors.backups import BackupsConnector
from connectors.conformance import SYSTEM_NAME, ConnectorConformance
from connectors.contract import Connector, ErasureOutcome, Subject
from connectors.registry import build_connector

KEY = bytes(range(32, 64))


class TestBackupsConformance(ConnectorConformance):
    connector_type = "s3_backups"
    may_hold_anyone = True

    @pytest_asyncio.fixture
    async def bucket(self, s3_endpoint: str) -> str:
        """A bucket of its own with two backups under ``nightly/`` and one object outside it."""
        s3 = boto3.client("s3", endpoint_url=s3_endpoint)
        name = "kit-" + uuid.uuid4().hex[:12]
        s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=name, Key="nightly/monday.dump", Body=b"dump 1")
        s3.put_object(Bucket=name, Key="nightly/tuesday.dump", Body=b"dump 2")
        s3.put_object(Bucket=name, Key="elsewhere/report.csv", Body=b"not a backup")
        return name

    @pytest_asyncio.fixture
    async def connector_options(self, s3_endpoint: str, bucket: str) -> dict[str, Any]:
        return {"bucket": bucket, "prefix": "nightly/", "endpoint_url": s3_endpoint, "retention_days": 30,
                "delete_expired": True}

    @pytest_asyncio.fixture
    async def ledger(self, orchestrator_db: str) -> AsyncIterator[ErasureLedger]:
        pool = await asyncpg.create_pool(orchestrator_db, min_size=1, max_size=2)
        yield ErasureLedger(pool, [KEY])
        await pool.close()

    @pytest_asyncio.fixture
    async def connector(self, connector_options: dict[str, Any], ledger: ErasureLedger) -> AsyncIterator[Connector]:
        """Built through the registry with the erasure ledger attached, as the orchestrator does."""
        conn = build_connector(SYSTEM_NAME, self.connector_type, connector_options)
        conn.attach({"erasure_ledger": ledger})
        await conn.open()
        try:
            yield conn
        finally:
            await conn.close()

    @pytest_asyncio.fixture
    async def seeded_subject(self, bucket: str) -> Subject:
        return Subject(request_id="conformance", identities={"email": "jane@example.com", "user_id": "cust-1"})

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        return Subject(request_id="conformance-absent", identities={"email": "nobody@example.com"})

    @pytest_asyncio.fixture
    async def bad_options(self, s3_endpoint: str, bucket: str) -> list[dict[str, Any]]:
        good = {"bucket": bucket, "prefix": "nightly/", "endpoint_url": s3_endpoint, "retention_days": 30}
        return [
            {"prefix": "nightly/", "endpoint_url": s3_endpoint, "retention_days": 30},
            {"bucket": bucket, "endpoint_url": s3_endpoint},
            {**good, "retention_days": 0},
            {**good, "covers_since": "not a date"},
            {**good, "access_key_id_env": "CONFORMANCE_UNSET_KEY_ID"},
            {**good, "access_key_id_env": "CONFORMANCE_UNSET_KEY_ID",
             "secret_access_key_env": "CONFORMANCE_UNSET_SECRET"},
            {**good, "bucket": "kit-no-such-" + uuid.uuid4().hex[:12]},
        ]

    async def complete_erasure(self, connector: Connector, subject: Subject, outcome: ErasureOutcome) -> None:
        """Let the retention pass: the connector's clock a second past ``completes_at``."""
        assert isinstance(connector, BackupsConnector) and outcome.completes_at is not None
        later = outcome.completes_at + timedelta(seconds=1)
        connector.clock = lambda: later
