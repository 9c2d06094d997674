"""The Postgres connector's erasure runs: idempotence, resumption after a crash, verification afterwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import pytest

from connectors.contract import PlanItem, RetainedItem
from connectors.testing import MemoryPlanStore
from tests.connectors.conftest import (
    CUSTOMER_1,
    EXAMPLE_POLICY,
    JANE,
    TAX_GROUND,
    MakeConnector,
    dump,
    hashed,
    noop,
    row,
    subject,
)


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
    total, rows = len(plan.all_items), sum(item.rows for item in plan.all_items[1:])
    assert any(item.key_range is not None for item in plan.all_items)  # login's six rows: one key range
    assert outcome.batches == total - 1 and resumed_reports[-1] == {"batches": total - 1, "rows": rows}
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
