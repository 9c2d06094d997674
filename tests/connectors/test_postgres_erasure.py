"""The Postgres connector's erasure policy against Fides' example: strategies, overrides, retention, shared rows."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from connectors.contract import ConfigurationError, PlanItem, RetainedItem
from connectors.masking import SHARED_GROUND
from connectors.postgres import PostgresConnector
from connectors.testing import MemoryPlanStore
from tests.connectors.conftest import (
    CUSTOMER_1,
    DATASET,
    EXAMPLE_POLICY,
    JANE,
    SECRET,
    TAX_GROUND,
    MakeConnector,
    dump,
    hashed,
    noop,
    row,
    subject,
)
from workers.demo import DEMO_RIGHTS_SQL

CREATED = datetime(2020, 4, 1, 11, 47, 42)

# The TOML example given to integrators; parsed here so that it stays valid.
EXAMPLE_TOML = """
[systems.shop]
type = "postgres"
dsn_env = "SHOP_DATABASE_URL"
dataset = "postgres_example_test_dataset.yml"
hash_secret_env = "SHOP_HASH_SECRET"
batch_size = 500

[systems.shop.policy]
default_strategy = "null_rewrite"

[[systems.shop.policy.rules]]
categories = ["user.contact.email"]
strategy = "hash"

[[systems.shop.policy.rules]]
categories = ["user.name"]
strategy = "string_rewrite"
rewrite_value = "REDACTED"

[[systems.shop.policy.rules]]
collections = ["login"]
strategy = "delete_row"

[[systems.shop.policy.retain]]
collection = "orders"
ground = "Tax law: invoices and orders kept 10 years (HGB §257)"
"""

def others(state: dict[str, list[str]], touched: Mapping[str, str]) -> dict[str, list[str]]:
    """The dump minus the rows of each table whose JSON holds the table's marker (e.g. '"id": 3,')."""
    return {t: [r for r in rows if t not in touched or touched[t] not in r] for t, rows in state.items()}


async def erase_with_toml(
    system: dict[str, Any], dataset_dir: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> PostgresConnector:
    """Build the connector from a parsed ``[systems.<name>]`` table as the registry does, erase jane."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = {k: v for k, v in system.items() if k not in ("type", "tenants")}
    options["dataset"] = str(dataset_dir / options["dataset"])
    connector = PostgresConnector.from_options("shop", options)
    await connector.open()
    plan = MemoryPlanStore()
    await connector.erase(subject(JANE), plan, noop)
    assert (await connector.verify_erasure(subject(JANE), plan)).ok
    await connector.close()
    return connector


async def test_example_toml_erases_as_documented(
    fides_db: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tomllib.loads(EXAMPLE_TOML)["systems"]["shop"]
    assert system["policy"] == EXAMPLE_POLICY
    env = {"SHOP_DATABASE_URL": fides_db, "SHOP_HASH_SECRET": SECRET}
    await erase_with_toml(system, DATASET.parent, env, monkeypatch)
    assert await row(db, "customer", 3) == {
        "id": 3,
        "email": hashed(JANE),
        "name": "REDACTED",
        "created": CREATED,
        "address_id": 4,
    }
    assert await row(db, "login", 8) is None
    assert (await row(db, "orders", "ord_ddd-eee"))["customer_id"] == 3  # kept for tax law


async def test_demo_configuration_erases(
    fides_db: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system shipped in workers/demo/dsr.demo.toml works with this connector."""
    demo = DATASET.parent / "dsr.demo.toml"
    system = tomllib.loads(demo.read_text())["systems"]["appdb"]
    await db.execute(DEMO_RIGHTS_SQL)  # the switch columns the demo adds to Fides' example when it loads it
    env = {system["dsn_env"]: fides_db, system["hash_secret_env"]: SECRET}
    await erase_with_toml(system, demo.parent, env, monkeypatch)
    assert (await row(db, "customer", 3))["email"] == hashed(JANE)
    assert await row(db, "login", 8) is None


async def test_every_strategy_on_jane(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    """hash (emails), string_rewrite (names), delete_row (login), null_rewrite (the rest of user.*)."""
    connector = await make_connector(policy={**EXAMPLE_POLICY, "retain": []})
    before = await dump(db)
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(JANE), plan, noop)

    assert outcome.masked == {"customer": 1, "orders": 1, "payment_card": 1, "address": 1}
    assert outcome.deleted == {"login": 1}
    # Applied leaves first, the identity row last (discovery order: customer, address, login, orders, card).
    assert [i.collection for i in plan.all_items] == [
        "payment_card",
        "orders",
        "login",
        "address",
        "customer",
    ]
    assert outcome.retained == []
    assert await row(db, "customer", 3) == {
        "id": 3,
        "email": hashed(JANE),
        "name": "REDACTED",  # hash, string_rewrite; id is the key: kept
        "created": CREATED,
        "address_id": 4,  # system.operations: left alone
    }
    assert await row(db, "login", 8) is None
    assert await row(db, "payment_card", "pay_ccc-ccc") == {
        "id": "pay_ccc-ccc",
        "name": None,
        "ccn": None,
        "code": None,
        "preferred": None,
        "customer_id": None,
        "billing_address_id": 4,
    }
    assert await row(db, "orders", "ord_ddd-eee") == {
        "id": "ord_ddd-eee",
        "customer_id": None,
        "shipping_address_id": 4,
        "payment_card_id": "pay_ccc-ccc",
    }
    assert await row(db, "address", 4) == {
        "id": 4,
        "house": None,
        "street": None,
        "city": None,
        "state": None,
        "zip": None,
    }
    # Nobody else's row changed.
    after = await dump(db)
    touched = {
        "customer": '"id": 3,',
        "login": '"id": 8,',
        "payment_card": '"id": "pay_ccc-ccc"',
        "orders": '"id": "ord_ddd-eee"',
        "address": '"id": 4,',
    }
    assert others(after, touched) == others(before, touched)
    assert sum(len(v) for v in after.values()) == sum(len(v) for v in before.values()) - 1
    verification = await connector.verify_erasure(subject(JANE), plan)
    assert verification.ok and verification.remaining == {} and verification.retained == []


async def test_longest_category_prefix_wins_and_collection_rules_beat_category_rules(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    policy = {
        "rules": [
            {"categories": ["user.contact"], "strategy": "null_rewrite"},
            {"categories": ["user.contact.email"], "strategy": "hash"},
            {
                "categories": ["user.contact.email"],
                "collections": ["service_request"],
                "strategy": "string_rewrite",
                "rewrite_value": "gone",
            },
            {"categories": ["user.financial"], "strategy": "delete_row"},
        ]
    }
    connector = await make_connector(policy=policy)
    await connector.erase(subject(CUSTOMER_1), MemoryPlanStore(), noop)
    assert (await row(db, "customer", 1))["email"] == hashed(
        CUSTOMER_1
    )  # user.contact.email beats user.contact
    assert (await row(db, "service_request", "ser_aaa-aaa"))["alt_email"] == "gone"  # scoped rule beats both
    assert (await row(db, "service_request", "ser_aaa-aaa"))["email"] == CUSTOMER_1  # system.operations
    assert await row(db, "payment_card", "pay_aaa-aaa") is None  # delete_row via user.financial
    assert (await row(db, "customer", 1))["name"] is None  # default null_rewrite (user.name has no rule)
    assert (
        await db.fetchval("SELECT count(*) FROM visit WHERE email = $1", CUSTOMER_1) == 1
    )  # email is its key


async def test_delete_row_with_a_composite_timestamp_key(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    """visit's key (email, last_visit) is the table's, not declared: it travels through the plan as JSON."""
    connector = await make_connector(policy={"rules": [{"collections": ["visit"], "strategy": "delete_row"}]})
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(CUSTOMER_1), plan, noop)
    assert outcome.deleted == {"visit": 1}
    assert [i.key for i in plan.all_items if i.collection == "visit"] == [
        {"email": CUSTOMER_1, "last_visit": "2021-01-06T01:00:00"}
    ]
    assert [r["email"] for r in await db.fetch("SELECT email FROM visit")] == ["customer-2@example.com"]
    assert (await connector.verify_erasure(subject(CUSTOMER_1), plan)).ok


async def test_masking_strategy_override_wins(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    """employee.name: string_rewrite 'testing' + suffix '-test' in the dataset beats the policy's rule."""
    connector = await make_connector(policy=EXAMPLE_POLICY)
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject("employee-1@example.com"), plan, noop)
    assert await row(db, "employee", 1) == {
        "id": 1,
        "email": hashed("employee-1@example.com"),
        "name": "testing-test",
        "address_id": 3,
    }
    assert (await row(db, "employee", 2))["name"] == "Jane Employee"
    # The three service requests it handled (reached 'from' employee.id) lose their user.* fields.
    requests = await db.fetch(
        "SELECT id, alt_email, employee_id FROM service_request WHERE id <> 'ser_ddd-ddd'"
    )
    assert {(r["id"], r["alt_email"], r["employee_id"]) for r in requests} == {
        ("ser_aaa-aaa", hashed("customer-1-alt@example.com"), None),
        ("ser_bbb-bbb", None, None),
        ("ser_ccc-ccc", None, None),
    }
    # Address 3 is also employee 2's: shared, kept.
    assert (await row(db, "address", 3))["street"] == "Example Ave"
    assert outcome.retained == [RetainedItem(collection="address", count=1, ground=SHARED_GROUND)]


async def test_collection_level_delete_override(
    make_connector: MakeConnector, db: asyncpg.Connection, tmp_path: Path
) -> None:
    doc = yaml.safe_load(DATASET.read_text())
    payment = next(c for c in doc["dataset"][0]["collections"] if c["name"] == "payment_card")
    payment["fides_meta"] = {"masking_strategy_override": {"strategy": "delete"}}
    path = tmp_path / "dataset.yml"
    path.write_text(yaml.safe_dump(doc))
    connector = await make_connector(dataset=str(path))
    outcome = await connector.erase(subject(JANE), MemoryPlanStore(), noop)
    assert outcome.deleted == {"payment_card": 1}
    assert await row(db, "payment_card", "pay_ccc-ccc") is None
    assert await db.fetchval("SELECT count(*) FROM payment_card") == 2


async def test_hash_on_a_non_text_column_is_a_configuration_error(make_connector: MakeConnector) -> None:
    with pytest.raises(
        ConfigurationError, match=r"hash strategy needs a text column, but public\.address\.house is integer"
    ):
        await make_connector(policy={"rules": [{"categories": ["user.contact.address"], "strategy": "hash"}]})
    with pytest.raises(ConfigurationError, match=r"string_rewrite.*public\.payment_card\.ccn is bigint"):
        await make_connector(
            policy={"rules": [{"categories": ["user.financial"], "strategy": "string_rewrite"}]}
        )
    with pytest.raises(
        ConfigurationError, match=r"writes 120 characters, but public\.customer\.name holds at most 100"
    ):
        await make_connector(
            policy={
                "rules": [
                    {"categories": ["user.name"], "strategy": "string_rewrite", "rewrite_value": "x" * 120}
                ]
            }
        )


async def test_retention_of_a_collection_for_tax_law(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    connector = await make_connector(policy=EXAMPLE_POLICY)
    before = await row(db, "orders", "ord_ddd-eee")
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(JANE), plan, noop)
    assert (
        await row(db, "orders", "ord_ddd-eee")
        == before
        == {"id": "ord_ddd-eee", "customer_id": 3, "shipping_address_id": 4, "payment_card_id": "pay_ccc-ccc"}
    )
    assert outcome.retained == [RetainedItem(collection="orders", count=1, ground=TAX_GROUND)]
    assert "orders" not in outcome.masked
    assert [i for i in plan.all_items if i.collection == "orders"] == [
        PlanItem(collection="orders", key={"id": "ord_ddd-eee"}, action="retain", ground=TAX_GROUND)
    ]
    verification = await connector.verify_erasure(subject(JANE), plan)
    assert verification.ok
    assert verification.retained == [RetainedItem(collection="orders", count=1, ground=TAX_GROUND)]


async def test_retention_of_categories_keeps_fields_and_masks_the_rest(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    ground = "PSD2: payment records kept 5 years"
    policy = {
        "retain": [{"categories": ["user.financial"], "ground": ground}],
        "rules": [{"collections": ["payment_card"], "strategy": "delete_row"}],
    }
    connector = await make_connector(policy=policy)
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(JANE), plan, noop)
    # Kept fields forbid deleting the row: it is masked instead, financial fields kept.
    assert await row(db, "payment_card", "pay_ccc-ccc") == {
        "id": "pay_ccc-ccc",
        "name": "Example Card 3",
        "ccn": 373719391,
        "code": 222,
        "preferred": None,
        "customer_id": None,
        "billing_address_id": 4,
    }
    item = next(i for i in plan.all_items if i.collection == "payment_card")
    assert (item.action, item.ground, item.retained_fields) == ("update", ground, ["ccn", "code", "name"])
    assert item.assignments == {"customer_id": None, "preferred": None}
    assert outcome.masked["payment_card"] == 1
    assert RetainedItem(
        collection="payment_card", count=1, ground=ground, fields=["ccn", "code", "name"]
    ) in (outcome.retained)
    assert (await connector.verify_erasure(subject(JANE), plan)).ok


async def test_shared_rows_are_retained(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    """customer-1's addresses 1 and 2 are also customer 2's; jane's address 4 is hers alone."""
    connector = await make_connector(policy=EXAMPLE_POLICY)
    addresses = {r["id"]: dict(r) for r in await db.fetch("SELECT * FROM address")}
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(CUSTOMER_1), plan, noop)
    assert {r["id"]: dict(r) for r in await db.fetch("SELECT * FROM address")} == addresses
    assert RetainedItem(collection="address", count=2, ground=SHARED_GROUND) in outcome.retained
    assert {tuple(i.key.values()) for i in plan.all_items if i.ground == SHARED_GROUND} == {(1,), (2,)}
    assert (await row(db, "customer", 1))["email"] == hashed(CUSTOMER_1)  # the subject's own row: erased
    assert await db.fetchval("SELECT count(*) FROM login WHERE customer_id = 1") == 0
    assert (await connector.verify_erasure(subject(CUSTOMER_1), plan)).ok

    await connector.erase(subject(JANE), MemoryPlanStore(), noop)
    assert (await row(db, "address", 4))["street"] is None  # not shared: erased
