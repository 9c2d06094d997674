"""The Postgres connector's key-range erasure: plan items that stand for many rows."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from connectors.contract import PlanItem, RetainedItem
from connectors.masking import SHARED_GROUND
from connectors.testing import MemoryPlanStore
from tests.connectors.conftest import CUSTOMER_1, EXAMPLE_POLICY, TAX_GROUND, MakeConnector, dump, noop, subject

MINE = "many@example.com"
DATASET: dict[str, Any] = {"dataset": [{"fides_key": "ranges", "collections": [
    {"name": "member", "fields": [
        {"name": "id", "data_categories": ["system.operations"], "fides_meta": {"primary_key": True}},
        {"name": "email", "data_categories": ["user.contact.email"], "fides_meta": {"identity": "email"}},
    ]},
    {"name": "event", "fields": [
        {"name": "id", "data_categories": ["system.operations"], "fides_meta": {"primary_key": True}},
        {"name": "member_id", "data_categories": ["system.operations"], "fides_meta": {"references": [
            {"dataset": "ranges", "field": "member.id", "direction": "from"}]}},
        {"name": "note", "data_categories": ["user.behavior"]},
    ]},
]}]}
DELETE_EVENTS = {"rules": [{"collections": ["event"], "strategy": "delete_row"}]}
MASK_EVENTS = {"rules": [{"collections": ["event"], "strategy": "string_rewrite", "rewrite_value": "gone"}]}


@pytest.fixture
async def events(db: asyncpg.Connection, tmp_path: Path) -> str:
    """Member 1 (MINE) owns 95 events, member 2 every fourth id in between; returns the dataset's path."""
    await db.execute("""
        CREATE TABLE member (id bigint PRIMARY KEY, email text);
        CREATE TABLE event (id bigint PRIMARY KEY, member_id bigint, note text);
        INSERT INTO member VALUES (1, 'many@example.com'), (2, 'other@example.com');
        INSERT INTO event SELECT g, CASE WHEN g % 4 = 0 THEN 2 ELSE 1 END, CASE WHEN g % 7 = 0 THEN NULL ELSE 'n' END
        FROM generate_series(1, 126) g;
    """)
    path = tmp_path / "ranges.yml"
    path.write_text(yaml.safe_dump(DATASET))
    return str(path)


async def mine(db: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch("SELECT id, note FROM event WHERE member_id = 1 ORDER BY id")]


async def theirs(db: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch("SELECT * FROM event WHERE member_id = 2 ORDER BY id")]


async def test_deletion_is_planned_in_ranges_and_spares_other_rows_inside_them(
    make_connector: MakeConnector, db: asyncpg.Connection, events: str
) -> None:
    before = await theirs(db)
    assert len(before) == 31 and len(await mine(db)) == 95
    connector = await make_connector(dataset=events, policy=DELETE_EVENTS, range_rows=10, batch_size=5)
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(MINE), plan, noop)
    ranges = [i for i in plan.all_items if i.collection == "event"]
    assert all(i.key_range is not None and i.action == "delete" for i in ranges)
    assert [i.rows for i in ranges] == [10] * 9 + [5]
    assert ranges[0].key_range.low is None and ranges[-1].key_range.high is None  # every key is in a range
    assert all(a.key_range.high == b.key_range.low for a, b in pairwise(ranges))
    assert outcome.deleted == {"event": 95}
    assert await mine(db) == [] and await theirs(db) == before  # member 2's rows between member 1's: kept
    assert (await connector.verify_erasure(subject(MINE), plan)).ok


async def test_masking_in_ranges_keeps_nulls_and_verification_sees_a_row_come_back(
    make_connector: MakeConnector, db: asyncpg.Connection, events: str
) -> None:
    before = await theirs(db)
    connector = await make_connector(dataset=events, policy=MASK_EVENTS, range_rows=10, batch_size=5)
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(MINE), plan, noop)
    assert outcome.masked["event"] == 95
    assert {r["note"] for r in await mine(db)} == {"gone", None}  # a NULL holds nothing: it stays NULL
    assert all(r["note"] is None for r in await mine(db) if r["id"] % 7 == 0)
    assert await theirs(db) == before
    assert (await connector.verify_erasure(subject(MINE), plan)).ok

    await db.execute("UPDATE event SET note = 'back' WHERE id = 50")  # inside a done range
    await db.execute("INSERT INTO event VALUES (1000, 1, 'new')")  # beyond the last bound: still a range
    await db.execute("INSERT INTO event VALUES (1001, 2, 'theirs')")  # not the subject's
    verification = await connector.verify_erasure(subject(MINE), plan)
    assert verification.remaining == {"event": 2}


async def test_a_crash_between_range_transactions_resumes_without_missing_or_repeating(
    make_connector: MakeConnector, db: asyncpg.Connection, events: str
) -> None:
    before = await theirs(db)

    def crash_after_two(detail: Mapping[str, Any]) -> None:
        if detail.get("batches") == 2:
            raise RuntimeError("worker crashed")

    plan = MemoryPlanStore()
    crashing = await make_connector(dataset=events, policy=DELETE_EVENTS, range_rows=10, batch_size=5)
    with pytest.raises(RuntimeError, match="worker crashed"):
        await crashing.erase(subject(MINE), plan, crash_after_two)
    left = len(await mine(db))
    assert 0 < left < 95 and plan.done_count < len(plan.all_items)

    reports: list[dict[str, Any]] = []
    fresh = await make_connector(dataset=events, policy=DELETE_EVENTS, range_rows=10, batch_size=5)
    outcome = await fresh.erase(subject(MINE), plan, reports.append)
    assert reports[-1]["rows"] == sum(i.rows for i in plan.all_items) - (95 - left)  # nothing applied twice
    assert outcome.deleted == {"event": 95} and plan.done_count == len(plan.all_items)
    assert await mine(db) == [] and await theirs(db) == before
    state = await dump(db)
    plan.forget_done()  # every commit's record lost: applied again, nothing changes
    await fresh.erase(subject(MINE), plan, noop)
    assert await dump(db) == state
    assert (await fresh.verify_erasure(subject(MINE), plan)).ok


async def test_retained_and_shared_rows_keep_their_row_items_and_ground(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    connector = await make_connector(policy=EXAMPLE_POLICY)
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(CUSTOMER_1), plan, noop)
    by_collection: dict[str, list[PlanItem]] = {}
    for item in plan.all_items:
        by_collection.setdefault(item.collection, []).append(item)
    assert [(i.action, i.rows) for i in by_collection["login"]] == [("delete", 6)]  # one range
    assert by_collection["login"][0].key_range is not None
    assert all(i.key_range is None and i.ground == TAX_GROUND for i in by_collection["orders"])
    assert all(i.key_range is None for i in by_collection["address"])  # some rows are shared: row by row
    assert all(i.key_range is None for i in by_collection["customer"])  # hashed: values depend on the row
    assert RetainedItem(collection="orders", count=3, ground=TAX_GROUND) in outcome.retained
    assert RetainedItem(collection="address", count=2, ground=SHARED_GROUND) in outcome.retained
    assert await db.fetchval("SELECT count(*) FROM login WHERE customer_id = 1") == 0
    assert await db.fetchval("SELECT count(*) FROM orders WHERE customer_id = 1") == 3
    assert (await connector.verify_erasure(subject(CUSTOMER_1), plan)).ok


def test_plan_items_stored_before_ranges_still_load() -> None:
    stored = {"collection": "login", "key": {"id": 8}, "action": "delete", "assignments": {}, "ground": None,
              "retained_fields": []}
    item = PlanItem.model_validate(stored)
    assert item.key_range is None and item.rows == 1 and item.key == {"id": 8}
