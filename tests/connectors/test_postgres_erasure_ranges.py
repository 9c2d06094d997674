"""The Postgres connector's key-range erasure: plan items that stand for many rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from connectors.contract import ConnectorError, PlanItem, RetainedItem
from connectors.masking import SHARED_GROUND
from connectors.postgres import PostgresConnector
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


class CrashingPlanStore(MemoryPlanStore):
    """A plan store where the worker dies at the ``n``-th ``mark_done``, or just after the first ``record``."""

    def __init__(self, *, mark_done: int = 0, record: bool = False) -> None:
        super().__init__()
        self.crash_in_mark_done, self.crash_in_record, self.calls = mark_done, record, 0

    async def mark_done(self, item_ids: Sequence[int]) -> None:
        self.calls += 1
        if self.calls == self.crash_in_mark_done:
            raise RuntimeError("worker crashed after the commit")
        await super().mark_done(item_ids)

    async def record(self, items: Mapping[int, PlanItem]) -> None:
        await super().record(items)
        if self.crash_in_record:
            self.crash_in_record = False
            raise RuntimeError("worker crashed before the commit")


async def dense(make_connector: MakeConnector, db: asyncpg.Connection, events: str) -> PostgresConnector:
    """The connector, once the planner knows member 1 holds most of ``event`` (three rows in four)."""
    await db.execute("ANALYZE event")
    return await make_connector(dataset=events, policy=DELETE_EVENTS, range_rows=10, batch_size=5)


async def test_a_subject_holding_most_of_a_table_gets_ranges_on_its_keys_counted_as_applied(
    make_connector: MakeConnector, db: asyncpg.Connection, events: str
) -> None:
    before = await theirs(db)
    connector = await dense(make_connector, db, events)
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(MINE), plan, noop)
    ranges = [i for i in plan.all_items if i.collection == "event"]
    lows = [None, *(str(k) for k in range(11, 122, 10))]  # every tenth key of the table, whoever's row it is
    assert [(i.key_range.low, i.key_range.high) for i in ranges] == list(zip(lows, [*lows[1:], None], strict=True))
    assert all(i.key_range.rows is None and i.key_range.txn for i in ranges)  # counted by the transactions
    assert sum(i.rows for i in ranges) == 95 and outcome.deleted == {"event": 95}
    assert await mine(db) == [] and await theirs(db) == before
    assert (await connector.verify_erasure(subject(MINE), plan)).ok
    again = await connector.erase(subject(MINE), plan, noop)  # a retried activity: same counts, nothing applied
    assert again.deleted == {"event": 95} and again.batches == 0


async def test_a_crash_after_a_commit_keeps_the_count_of_what_that_commit_erased(
    make_connector: MakeConnector, db: asyncpg.Connection, events: str
) -> None:
    plan = CrashingPlanStore(mark_done=3)
    with pytest.raises(RuntimeError, match="after the commit"):
        await (await dense(make_connector, db, events)).erase(subject(MINE), plan, noop)
    events_planned = [i for i in plan.all_items if i.collection == "event"]
    erased = sum(i.rows for i in events_planned)  # what the three committed transactions recorded
    unmarked = sum(i.rows for i in events_planned[plan.done_count:])
    assert unmarked > 0 and len(await mine(db)) == 95 - erased

    reports: list[dict[str, Any]] = []
    outcome = await (await dense(make_connector, db, events)).erase(subject(MINE), plan, reports.append)
    # The last commit is asked about, not applied again (which would count nothing): its rows stay counted.
    assert outcome.deleted == {"event": 95} and await mine(db) == []
    assert reports[-1]["rows"] == 95 - erased + 1  # the rest of the ranges, and member 1's own row
    assert plan.done_count == len(plan.all_items)


async def test_a_crash_before_a_commit_applies_those_ranges_again(
    make_connector: MakeConnector, db: asyncpg.Connection, events: str
) -> None:
    plan = CrashingPlanStore(record=True)
    with pytest.raises(RuntimeError, match="before the commit"):
        await (await dense(make_connector, db, events)).erase(subject(MINE), plan, noop)
    assert len(await mine(db)) == 95  # the transaction rolled back ...
    [recorded] = [i for i in plan.all_items if i.key_range and i.key_range.txn]  # ... after its record was kept
    outcome = await (await dense(make_connector, db, events)).erase(subject(MINE), plan, noop)
    assert outcome.deleted == {"event": 95} and await mine(db) == []
    assert recorded.key_range.txn not in {i.key_range.txn for i in plan.all_items if i.key_range}


async def test_a_transaction_still_open_from_a_dead_attempt_is_waited_for(
    make_connector: MakeConnector, db: asyncpg.Connection, events: str, fides_db: str
) -> None:
    plan = CrashingPlanStore(record=True)
    with pytest.raises(RuntimeError, match="before the commit"):
        await (await dense(make_connector, db, events)).erase(subject(MINE), plan, noop)
    [(item_id, item)] = [(n, i) for n, i in enumerate(plan.all_items, 1) if i.key_range and i.key_range.txn]
    zombie = await asyncpg.connect(fides_db)  # its client gone, a transaction the server still holds open
    await zombie.execute("BEGIN")
    xid = await zombie.fetchval("SELECT pg_current_xact_id()::text")
    open_txn = item.key_range.model_copy(update={"txn": xid})  # type: ignore[union-attr]
    await plan.record({item_id: item.model_copy(update={"key_range": open_txn})})
    connector = await dense(make_connector, db, events)
    with pytest.raises(ConnectorError, match="still open") as raised:
        await connector.erase(subject(MINE), plan, noop)
    assert raised.value.retryable and len(await mine(db)) == 95
    await zombie.close()  # the server ends it (rolled back): the retry applies the range again
    assert (await connector.erase(subject(MINE), plan, noop)).deleted == {"event": 95}
    assert await mine(db) == []


def test_plan_items_stored_before_ranges_still_load() -> None:
    stored = {"collection": "login", "key": {"id": 8}, "action": "delete", "assignments": {}, "ground": None,
              "retained_fields": []}
    item = PlanItem.model_validate(stored)
    assert item.key_range is None and item.rows == 1 and item.key == {"id": 8}
