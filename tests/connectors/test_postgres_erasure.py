"""The Postgres connector's erasure against Fides' example: strategies, retention, shared rows, resumption."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
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
    DATASET,
    EXAMPLE_POLICY,
    SECRET,
    TAX_GROUND,
    MakeConnector,
    dump,
    hashed,
    subject,
)

JANE = "jane@example.com"
CREATED = datetime(2020, 4, 1, 11, 47, 42)
CUSTOMER_1 = "customer-1@example.com"

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


def noop(_: Mapping[str, Any]) -> None:
    """A progress reporter that ignores progress."""


async def row(db: asyncpg.Connection, table: str, key: Any) -> dict[str, Any] | None:
    rec = await db.fetchrow(f"SELECT * FROM {table} WHERE id = $1", key)
    return dict(rec) if rec else None


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


async def test_running_twice_changes_nothing_more(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    connector = await make_connector(policy=EXAMPLE_POLICY)
    plan = MemoryPlanStore()
    first = await connector.erase(subject(CUSTOMER_1), plan, noop)
    state = await dump(db)
    second = await connector.erase(subject(CUSTOMER_1), plan, noop)
    assert await dump(db) == state
    assert (second.masked, second.deleted, second.retained) == (first.masked, first.deleted, first.retained)
    assert (first.batches, second.batches) == (1, 0)
    # Another worker (a fresh connector) retrying the same step: nothing changes either.
    third = await (await make_connector(policy=EXAMPLE_POLICY)).erase(subject(CUSTOMER_1), plan, noop)
    assert await dump(db) == state and third.batches == 0
    # Applying every item a second time gives the same rows (hashes are of the original values).
    plan.forget_done()
    fourth = await connector.erase(subject(CUSTOMER_1), plan, noop)
    assert await dump(db) == state and fourth.batches == 1
    assert (await connector.verify_erasure(subject(CUSTOMER_1), plan)).ok


class CrashingPlanStore(MemoryPlanStore):
    """A plan store whose first ``save``, or ``mark_done`` of the plan's last item, fails: a worker crash."""

    def __init__(self, fail_in: str) -> None:
        super().__init__()
        self.fail_in = fail_in
        self.crashed = False

    async def save(self, items: Sequence[PlanItem]) -> None:
        if self.fail_in == "save" and not self.crashed:
            self.crashed = True
            await super().save(items[:1])  # part of the plan reached the store
            raise RuntimeError("worker crashed in save")
        await super().save(items)

    async def mark_done(self, item_ids: Sequence[int]) -> None:
        if self.fail_in == "mark_done" and not self.crashed and max(item_ids) == len(self.all_items):
            self.crashed = True
            raise RuntimeError("worker crashed in mark_done")
        await super().mark_done(item_ids)


async def clean_run(make_connector: MakeConnector, dsn: str, email: str) -> dict[str, list[str]]:
    """The database state after an uninterrupted erasure of ``email`` in a fresh copy of the example."""
    connector = await make_connector(policy=EXAMPLE_POLICY, dsn=dsn, batch_size=1)
    await connector.erase(subject(email), MemoryPlanStore(), noop)
    conn = await asyncpg.connect(dsn)
    try:
        return await dump(conn)
    finally:
        await conn.close()


async def test_resumes_after_a_crash_mid_erasure(
    make_connector: MakeConnector, db: asyncpg.Connection, other_fides_db: str
) -> None:
    expected = await clean_run(make_connector, other_fides_db, CUSTOMER_1)
    original = await dump(db)
    reports: list[dict[str, Any]] = []

    def crash_after_first_batch(detail: Mapping[str, Any]) -> None:
        reports.append(dict(detail))
        if detail.get("batches") == 1:
            raise RuntimeError("worker crashed")

    plan = MemoryPlanStore()
    crashing = await make_connector(policy=EXAMPLE_POLICY, batch_size=1)
    with pytest.raises(RuntimeError, match="worker crashed"):
        await crashing.erase(subject(CUSTOMER_1), plan, crash_after_first_batch)
    await crashing.close()
    partial = await dump(db)
    assert plan.done_count == 1 and partial not in (original, expected)
    assert reports[-1] == {"batches": 1, "rows": 1}

    fresh = await make_connector(policy=EXAMPLE_POLICY, batch_size=1)
    resumed_reports: list[dict[str, Any]] = []
    outcome = await fresh.erase(subject(CUSTOMER_1), plan, resumed_reports.append)
    assert await dump(db) == expected
    total = len(plan.all_items)
    assert outcome.batches == total - 1 and resumed_reports[-1] == {"batches": total - 1, "rows": total - 1}
    assert plan.done_count == total
    assert (await fresh.verify_erasure(subject(CUSTOMER_1), plan)).ok


async def test_resumes_when_the_crash_hits_after_commit_before_mark_done(
    make_connector: MakeConnector, db: asyncpg.Connection, other_fides_db: str
) -> None:
    """The last batch committed but was not recorded: it is applied again, same result (no double hash)."""
    expected = await clean_run(make_connector, other_fides_db, CUSTOMER_1)
    plan = CrashingPlanStore("mark_done")
    crashing = await make_connector(policy=EXAMPLE_POLICY, batch_size=4)
    with pytest.raises(RuntimeError, match="crashed in mark_done"):
        await crashing.erase(subject(CUSTOMER_1), plan, noop)
    assert await dump(db) == expected  # everything committed ...
    assert plan.done_count < len(plan.all_items)  # ... but the last batch is still pending
    outcome = await (await make_connector(policy=EXAMPLE_POLICY, batch_size=4)).erase(
        subject(CUSTOMER_1), plan, noop
    )
    assert outcome.batches == 1 and plan.done_count == len(plan.all_items)
    assert await dump(db) == expected
    assert (await row(db, "customer", 1))["email"] == hashed(CUSTOMER_1)


async def test_resumes_after_a_crash_while_planning(
    make_connector: MakeConnector, db: asyncpg.Connection, other_fides_db: str
) -> None:
    expected = await clean_run(make_connector, other_fides_db, JANE)
    original = await dump(db)
    plan = CrashingPlanStore("save")
    connector = await make_connector(policy=EXAMPLE_POLICY, batch_size=1)
    with pytest.raises(RuntimeError, match="crashed in save"):
        await connector.erase(subject(JANE), plan, noop)
    assert await dump(db) == original and not plan.sealed
    await connector.erase(subject(JANE), plan, noop)
    assert await dump(db) == expected


async def test_verify_reports_what_remains(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    connector = await make_connector(policy=EXAMPLE_POLICY)
    plan = MemoryPlanStore()
    await connector.erase(subject(JANE), plan, noop)
    assert (await connector.verify_erasure(subject(JANE), plan)).ok

    await db.execute("UPDATE customer SET name = 'Jane Customer' WHERE id = 3")  # a masked row written again
    await db.execute("INSERT INTO login VALUES (8, 3, now())")  # a deleted row back
    await db.execute("INSERT INTO customer VALUES (42, 'Jane@Example.com', 'Jane Again', now(), NULL)")  # new
    await db.execute("INSERT INTO login VALUES (43, 42, now())")  # reached from the new row
    verification = await connector.verify_erasure(subject(JANE), plan)
    assert not verification.ok
    assert verification.remaining == {"customer": 2, "login": 2}
    assert verification.retained == [RetainedItem(collection="orders", count=1, ground=TAX_GROUND)]


async def test_verify_without_erasure_reports_everything_erasable(make_connector: MakeConnector) -> None:
    connector = await make_connector(policy=EXAMPLE_POLICY)
    verification = await connector.verify_erasure(subject(JANE), MemoryPlanStore())
    assert verification.remaining == {"customer": 1, "login": 1, "payment_card": 1, "address": 1}
    assert verification.retained == [RetainedItem(collection="orders", count=1, ground=TAX_GROUND)]
