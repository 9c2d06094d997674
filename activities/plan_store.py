"""Erasure plans kept in the orchestrator's database, so that a crashed erasure resumes exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import asyncpg

from connectors.contract import PlanItem


class PgPlanStore:
    """The plan of one (request, system) pair. Implements ``connectors.contract.PlanStore``."""

    def __init__(self, pool: asyncpg.Pool, request_id: str, system: str) -> None:
        self._pool = pool
        self._request_id = request_id
        self._system = system

    async def has_plan(self) -> bool:
        """Whether a sealed plan exists. An unsealed one (crash while planning) is discarded and rebuilt."""
        sealed = await self._pool.fetchval(
            "SELECT sealed FROM dsr_erasure_plan_state WHERE request_id = $1 AND system = $2",
            self._request_id, self._system,
        )
        if sealed:
            return True
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM dsr_erasure_plan_item WHERE request_id = $1 AND system = $2",
                self._request_id, self._system,
            )
            await conn.execute(
                """INSERT INTO dsr_erasure_plan_state (request_id, system) VALUES ($1, $2)
                   ON CONFLICT (request_id, system) DO NOTHING""",
                self._request_id, self._system,
            )
        return False

    async def save(self, items: Sequence[PlanItem]) -> None:
        """Append items to the (unsealed) plan."""
        if not items:
            return
        await self._pool.execute(
            """INSERT INTO dsr_erasure_plan_item (request_id, system, item)
               SELECT $1, $2, x FROM unnest($3::jsonb[]) WITH ORDINALITY AS t(x, n) ORDER BY n""",
            self._request_id, self._system, [i.model_dump(mode="json") for i in items],
        )

    async def seal(self) -> None:
        """Mark the plan complete."""
        await self._pool.execute(
            "UPDATE dsr_erasure_plan_state SET sealed = true WHERE request_id = $1 AND system = $2",
            self._request_id, self._system,
        )

    async def pending(self, batch_size: int) -> AsyncIterator[list[tuple[int, PlanItem]]]:
        """Batches of items not yet applied, in plan order (keyset pagination: memory stays flat)."""
        last = 0
        while True:
            rows = await self._pool.fetch(
                """SELECT id, item FROM dsr_erasure_plan_item
                   WHERE request_id = $1 AND system = $2 AND NOT done AND id > $3 ORDER BY id LIMIT $4""",
                self._request_id, self._system, last, batch_size,
            )
            if not rows:
                return
            last = rows[-1]["id"]
            yield [(r["id"], PlanItem.model_validate(r["item"])) for r in rows]

    async def mark_done(self, item_ids: Sequence[int]) -> None:
        """Record that these items were applied."""
        await self._pool.execute(
            "UPDATE dsr_erasure_plan_item SET done = true WHERE id = ANY($1::bigint[])", list(item_ids)
        )

    async def record(self, items: Mapping[int, PlanItem]) -> None:
        """Store these items again as they are now (their place in the plan and their state stay)."""
        if not items:
            return
        await self._pool.execute(
            """UPDATE dsr_erasure_plan_item t SET item = v.item
               FROM unnest($1::bigint[], $2::jsonb[]) AS v(id, item)
               WHERE t.id = v.id AND t.request_id = $3 AND t.system = $4""",
            list(items), [i.model_dump(mode="json") for i in items.values()], self._request_id, self._system,
        )

    async def items(self) -> AsyncIterator[PlanItem]:
        """Every item of the plan, in order."""
        last = 0
        while True:
            rows = await self._pool.fetch(
                """SELECT id, item FROM dsr_erasure_plan_item
                   WHERE request_id = $1 AND system = $2 AND id > $3 ORDER BY id LIMIT 1000""",
                self._request_id, self._system, last,
            )
            if not rows:
                return
            last = rows[-1]["id"]
            for r in rows:
                yield PlanItem.model_validate(r["item"])
