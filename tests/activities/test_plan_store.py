"""The orchestrator's erasure plan store: what a crashed erasure resumes from."""

from __future__ import annotations

from activities.db import create_pool
from activities.plan_store import PgPlanStore
from connectors.contract import KeyRange, PlanItem


def ranged(low: str | None, high: str | None) -> PlanItem:
    selection = {"inputs": [["member_id", False, [1]]]}
    return PlanItem(collection="event", action="delete",
                    key_range=KeyRange(field="id", low=low, high=high, selection=selection))


async def test_record_rewrites_items_in_place_and_keeps_their_order_and_state(orchestrator_db: str) -> None:
    pool = await create_pool(orchestrator_db)
    try:
        plan, other = PgPlanStore(pool, "req_1", "appdb"), PgPlanStore(pool, "req_2", "appdb")
        for store in (plan, other):
            assert not await store.has_plan()
            await store.save([ranged(None, "11"), ranged("11", "21"), ranged("21", None)])
            await store.seal()
        [batch] = [b async for b in plan.pending(10)]
        (first, _), (second, item), (third, _) = batch
        await plan.mark_done([first])
        counted = item.key_range.model_copy(update={"applied": 7, "txn": "4711"})  # type: ignore[union-attr]
        await plan.record({second: item.model_copy(update={"key_range": counted})})

        pending = [pair async for b in plan.pending(10) for pair in b]
        assert [item_id for item_id, _ in pending] == [second, third]  # done stays done, the order holds
        assert pending[0][1].key_range == counted and pending[0][1].rows == 7
        assert [i.rows async for i in plan.items()] == [0, 7, 0]  # not counted when planned: 0 until applied
        assert [i.key_range.txn async for i in other.items()] == [None, None, None]  # another request's plan
    finally:
        await pool.close()
