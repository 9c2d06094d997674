"""Fixtures for the connector tests: connectors over fresh copies of Fides' example database."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import pytest

from connectors.contract import Subject
from connectors.postgres import PostgresConnector
from tests.conftest import DEMO, fresh_database

DATASET = DEMO / "postgres_example_test_dataset.yml"
JANE = "jane@example.com"
CUSTOMER_1 = "customer-1@example.com"
SECRET = "test-hmac-secret"
TAX_GROUND = "Tax law: invoices and orders kept 10 years (HGB §257)"

# The policy of the report's TOML example: hash emails, rewrite names, delete logins, keep orders.
EXAMPLE_POLICY: dict[str, Any] = {
    "default_strategy": "null_rewrite",
    "rules": [
        {"categories": ["user.contact.email"], "strategy": "hash"},
        {"categories": ["user.name"], "strategy": "string_rewrite", "rewrite_value": "REDACTED"},
        {"collections": ["login"], "strategy": "delete_row"},
    ],
    "retain": [{"collection": "orders", "ground": TAX_GROUND}],
}

MakeConnector = Callable[..., Awaitable[PostgresConnector]]


def subject(email: str) -> Subject:
    """A subject known by one email address."""
    return Subject(request_id="req-test", identities={"email": email})


def noop(_: Mapping[str, Any]) -> None:
    """A progress reporter that ignores progress."""


async def row(db: asyncpg.Connection, table: str, key: Any) -> dict[str, Any] | None:
    """The row of ``table`` whose ``id`` is ``key``, or None."""
    rec = await db.fetchrow(f"SELECT * FROM {table} WHERE id = $1", key)
    return dict(rec) if rec else None


def hashed(value: str) -> str:
    """What the hash strategy writes for ``value`` with the test secret."""
    return hmac.new(SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()


async def dump(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """Every row of every table in schema public, as sorted JSON: the whole database state."""
    tables = await conn.fetch(
        "SELECT quote_ident(table_name) AS t FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
    )
    out = {}
    for r in tables:
        rows = await conn.fetch(f"SELECT to_jsonb(x)::text AS j FROM public.{r['t']} AS x")
        out[r["t"]] = sorted(x["j"] for x in rows)
    return out


@pytest.fixture
async def db(fides_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database, to check real rows."""
    conn = await asyncpg.connect(fides_db)
    yield conn
    await conn.close()


@pytest.fixture
async def make_connector(fides_db: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeConnector]:
    """Build and open connectors on the test database; ``dsn=`` points one at another database."""
    monkeypatch.setenv("APP_DSN", fides_db)
    monkeypatch.setenv("APP_HASH_SECRET", SECRET)
    opened: list[PostgresConnector] = []

    async def make(policy: dict[str, Any] | None = None, **options: Any) -> PostgresConnector:
        opts: dict[str, Any] = {"dataset": str(DATASET), "hash_secret_env": "APP_HASH_SECRET", **options}
        if "dsn" not in opts:
            opts["dsn_env"] = "APP_DSN"
        if policy is not None:
            opts["policy"] = policy
        connector = PostgresConnector.from_options("app", opts)
        await connector.open()
        opened.append(connector)
        return connector

    yield make
    for connector in opened:
        await connector.close()


@pytest.fixture
async def other_fides_db(pg: Any, fides_template: str) -> str:
    """A second fresh copy of Fides' example (for comparing a crashed run with a clean one)."""
    return await fresh_database(pg, "fides", template=fides_template)
