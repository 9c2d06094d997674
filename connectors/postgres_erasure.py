"""The erasure's key ranges and transactions, for :class:`connectors.postgres.PostgresConnector`.

A plan (see :meth:`PostgresConnector.erase`) holds row items and *key ranges*: where every
one of the subject's rows of a collection gets the same change, one item stands for the
subject's rows with a key in ``[low, high)``. Where the subject holds most of the table,
the bounds are every ``range_rows``-th key of the table, read from the key's index alone,
and the rows are counted by the transactions that change them; otherwise they are every
``range_rows``-th key of the subject's rows, counted when planned.

The plan is applied one transaction at a time, each marked done in the plan store once it
commits, each holding its locks about ``batch_seconds``. A transaction that counts rows
records its id and counts in the plan store just before it commits; a run that crashed
between that commit and ``mark_done`` asks the server whether the transaction committed
(``pg_xact_status``, PostgreSQL 13 or later) rather than applying the ranges again and
counting nothing. Applying anything twice changes nothing more.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from itertools import groupby, takewhile
from typing import TYPE_CHECKING, Any

import asyncpg

from connectors.contract import ConnectorError, KeyRange, PlanItem, PlanStore, ProgressReporter
from connectors.fides import Edge, Reach
from connectors.masking import ErasurePolicy, Group, statements
from connectors.postgres_config import Column, PostgresConfig, qi
from connectors.values import jsonable, text_param

RANGE_FAMILIES = frozenset({"int", "numeric", "uuid", "text"})
"""Key column families planned in key ranges: their text form reads back as the same value, in the same order."""
RANGE_SELECTION_MAX = 1000
"""Values a key range may store to select the subject's rows; a collection reached by more keeps row items."""
DENSE = 0.25
"""Share of a table's rows from which the subject's key ranges are the table's, read from the key's index alone."""
IDLE_IN_TRANSACTION = 60
"""Seconds an erasure transaction may sit idle on the server (its client gone) before the server ends it."""


class PostgresErasure:
    """Key-range planning and the erasure's transactions; mixed into ``PostgresConnector``."""

    if TYPE_CHECKING:  # provided by PostgresConnector
        name: str
        config: PostgresConfig
        policy: ErasurePolicy
        _pool: asyncpg.Pool | None
        _columns: dict[str, dict[str, Column]]

        def _table(self, collection: str) -> str: ...
        def _compared(self, collection: str, field: str, identity: bool) -> tuple[str, str]: ...

    def _range_template(self, reach: Reach, coll: str, edges: list[tuple[Edge, set]]) -> PlanItem | None:
        """The change of every range item of ``coll`` (bounds unset), or None when its rows need an item each.

        Ranges need: one change for every row (see ``CollectionPolicy.decide_range``), no
        row shared with another subject (that is decided row by row), a single-column key
        whose text form reads back exactly, and a selection small enough to store in each item.
        """
        cp = self.policy.collections[coll]
        if edges or len(cp.primary_key) != 1 or self._columns[coll][cp.primary_key[0]].family not in RANGE_FAMILIES:
            return None
        inputs = reach.of(coll)
        if not inputs or sum(len(values) for _, _, values in inputs) > RANGE_SELECTION_MAX:
            return None
        item = cp.decide_range()
        if item is not None:
            selection = [[f, identity, sorted(jsonable(v) for v in values)] for f, identity, values in inputs]
            item.key_range = KeyRange(field=cp.primary_key[0], rows=0, selection={"inputs": selection})
        return item

    def _selected(self, coll: str, selection: Mapping[str, Any], start: int) -> tuple[str, list[Any]]:
        """The condition "one of the subject's rows" as a key range's stored selection fixed it.

        A single value is compared with ``=`` (the usual case: one customer id), which
        costs PostgreSQL less per row than ``= ANY`` of a one-element array.
        """
        parts, args = [], []
        for field, identity, values in selection["inputs"]:
            lhs, array = self._compared(coll, field, identity)
            n = start + len(args)
            if len(values) == 1:
                parts.append(f"{lhs} = ${n}::text::{array.replace('[]', '')}")
                args.append(text_param(values[0]))
            else:
                parts.append(f"{lhs} = ANY(${n}::text[]::{array})")
                args.append([text_param(v) for v in values])
        return ("(" + " OR ".join(parts) + ")" if parts else "FALSE"), args

    async def _ranges(self, conn: asyncpg.Connection, coll: str, template: PlanItem) -> AsyncIterator[PlanItem]:
        """``template`` once per ``range_rows`` keys, in key order, the ranges covering every key.

        Where the subject's rows are most of the table (by the planner's estimate) the
        bounds are every Nth key of the *table*, read from the key's index alone: no row
        of the subject is read, so planning costs a small part of the erasure, and each
        range holds at most N of the subject's rows, which are counted as the range is
        applied (``KeyRange.applied``). Otherwise they are every Nth key among the
        subject's rows, numbered with ``row_number()`` (a sort of their keys, reading
        only them), and counted here. The first range has no lower bound and the last no
        upper one, so a row that appears later is inside a range whatever its key.
        """
        assert template.key_range is not None
        where, args = self._selected(coll, template.key_range.selection, 1)
        table, key, size, n = self._table(coll), qi(template.key_range.field), self.config.range_rows, len(args) + 1
        dense = await self._dense(conn, coll, where, args)
        if dense:
            sql = (f"WITH RECURSIVE b(k) AS (SELECT min({key}) FROM {table} UNION ALL "
                   f"SELECT (SELECT {key} FROM {table} WHERE {key} > b.k ORDER BY {key} OFFSET $1::bigint - 1 LIMIT 1) "
                   f"FROM b WHERE b.k IS NOT NULL) SELECT k::text AS low FROM b WHERE k IS NOT NULL")
            lows = [r["low"] for r in await conn.fetch(sql, size)]
        else:
            sql = (f"SELECT k::text AS low FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) AS n "
                   f"FROM {table} WHERE {where}) s WHERE (n - 1) % ${n}::bigint = 0 ORDER BY n")
            lows = [r["low"] for r in await conn.fetch(sql, *args, size)]
        if not lows:
            return
        tail = None
        if not dense:
            cast = self._columns[coll][template.key_range.field].cast
            tail = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE {where} AND {key} >= ${n}::text::{cast}", *args, lows[-1])
        for i, low in enumerate(lows):
            last = i + 1 == len(lows)
            rows = None if dense else tail if last else size
            bounds = {"low": low if i else None, "high": None if last else lows[i + 1], "rows": rows}
            yield template.model_copy(update={"key_range": template.key_range.model_copy(update=bounds)})

    async def _dense(self, conn: asyncpg.Connection, coll: str, where: str, args: list[Any]) -> bool:
        """Whether the planner expects ``where`` to select at least :data:`DENSE` of the table's rows."""
        total = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::regclass", self._table(coll))
        if not total or total <= 0:  # never analysed: no estimate to trust
            return False
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {self._table(coll)} WHERE {where}", *args)
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return plan[0]["Plan"]["Plan Rows"] >= DENSE * total

    async def _apply(self, plan: PlanStore, progress: ProgressReporter) -> int:
        """Apply the pending items, one transaction at a time, each marked done once committed.

        Row items, and key ranges small enough, share a transaction up to ``batch_size``
        rows. Larger ranges go alone or with the ranges that follow them, as many as the
        last such transaction's time says fit in ``batch_seconds`` (at most twice as many
        as before), so that no transaction holds its locks much longer than that, however
        slow the table's rows are to change. Ranges whose transaction was recorded but not
        marked done (a crash after its commit) are settled first (see ``_settle``).
        """
        batches = rows = 0
        take: dict[str, int] = {}
        async for pending in plan.pending(self.config.batch_size):
            batch = await self._settle(plan, pending)
            while batch:
                first, n = batch[0][1], self._chunk(batch, take)
                chunk, batch = batch[:n], batch[n:]
                started = time.perf_counter()
                applied = await self._apply_batch(chunk, plan)
                elapsed = time.perf_counter() - started
                await plan.mark_done([item_id for item_id, _ in chunk])
                if self._weight(first) > self.config.batch_size:
                    fits = int(n * self.config.batch_seconds / elapsed) if elapsed > 0 else 2 * n
                    take[first.collection] = max(1, min(fits, 2 * take[first.collection]))
                batches, rows = batches + 1, rows + sum(item.rows for item in applied)
                progress({"batches": batches, "rows": rows})
        return batches

    def _weight(self, item: PlanItem) -> int:
        """The rows ``item`` may change: a range counted only as it is applied holds at most ``range_rows``."""
        if item.key_range is not None and item.key_range.rows is None:
            return self.config.range_rows
        return item.rows

    def _chunk(self, batch: list[tuple[int, PlanItem]], take: dict[str, int]) -> int:
        """How many of the first items of ``batch`` the next transaction applies (see ``_apply``)."""
        size = self.config.batch_size
        if self._weight(batch[0][1]) > size:
            fit = batch[:take.setdefault(batch[0][1].collection, 1)]
            return len(range_runs([item for _, item in takewhile(lambda pair: pair[1].key_range is not None, fit)])[0])
        rows = 0
        for n, (_, item) in enumerate(batch):
            if rows + self._weight(item) > size:
                return n
            rows += self._weight(item)
        return len(batch)

    async def _settle(self, plan: PlanStore, batch: list[tuple[int, PlanItem]]) -> list[tuple[int, PlanItem]]:
        """Mark done the ranges whose recorded transaction committed; the rest of ``batch`` is still to apply.

        A range's transaction is recorded (``KeyRange.txn``, with the rows it changed)
        just before it commits, so a run that crashed after the commit and before
        ``mark_done`` asks the server (``pg_xact_status``) instead of applying the range
        again and counting nothing. An aborted transaction, or one the server no longer
        knows, is applied again; one still open (its client died mid-transaction; it ends
        within ``IDLE_IN_TRANSACTION``) is a retryable error.
        """
        txns = sorted({item.key_range.txn for _, item in batch if item.key_range and item.key_range.txn})
        if not txns:
            return batch
        assert self._pool is not None
        status = dict(await self._pool.fetch(
            "SELECT t, pg_xact_status(t::xid8) FROM unnest($1::text[]) AS t", txns))  # type: ignore[arg-type]
        if "in progress" in status.values():
            raise ConnectorError(f"{self.name}: an earlier attempt's erasure transaction is still open; "
                                 "retrying once it ends")
        committed = {item_id for item_id, item in batch
                     if item.key_range and status.get(item.key_range.txn) == "committed"}
        await plan.mark_done(sorted(committed))
        return [(item_id, item) for item_id, item in batch if item_id not in committed]

    async def _apply_batch(self, chunk: list[tuple[int, PlanItem]], plan: PlanStore) -> list[PlanItem]:
        """One transaction applying ``chunk`` in plan order: row items by statement shape, key ranges by run.

        Row items travel as one text array per column (``unnest``), so consecutive row items
        cost a few statements whatever their number; a run of consecutive key ranges is one
        statement on its outer bounds. Locks are held only as long as the statements take.
        Ranges are recorded in ``plan`` with the rows they changed and the transaction's id
        before it commits. Returns the items as applied.
        """
        assert self._pool is not None
        applied = dict(chunk)
        async with self._pool.acquire() as conn, conn.transaction():
            txn: str | None = None
            for kind, group in groupby(chunk, key=lambda pair: _kind(pair[1])):
                pairs = list(group)
                if kind == "row":
                    await self._apply_rows(conn, [item for _, item in pairs])
                    continue
                if kind == "uncounted" and txn is None:
                    txn = await conn.fetchval(
                        "SELECT pg_current_xact_id()::text FROM set_config("
                        "'idle_in_transaction_session_timeout', $1, true)", str(IDLE_IN_TRANSACTION * 1000))
                ids = iter([item_id for item_id, _ in pairs])
                for run in range_runs([item for _, item in pairs]):
                    changed = await self._apply_range(conn, run)
                    for i, item in enumerate(run):
                        item_id = next(ids)
                        if kind == "uncounted":  # counted as applied: recorded with the transaction below
                            assert item.key_range is not None
                            counted = item.key_range.model_copy(update={"applied": 0 if i else changed, "txn": txn})
                            applied[item_id] = item.model_copy(update={"key_range": counted})
            if txn is not None:
                await plan.record({item_id: item for item_id, item in applied.items()
                                   if item.key_range and item.key_range.txn == txn})
        return list(applied.values())

    async def _apply_rows(self, conn: asyncpg.Connection, items: list[PlanItem]) -> None:
        """Per statement shape, one set-based DELETE or UPDATE joining the items' keys."""
        for (coll, action, cols, keys), args in statements(items).items():
            names = [f"a{i}" for i in range(len(cols))] + [f"k{i}" for i in range(len(keys))]
            arrays = ", ".join(f"${i + 1}::text[]" for i in range(len(names)))
            source = f"unnest({arrays}) AS v({', '.join(names)})"
            where = " AND ".join(f"t.{qi(k)} = {self._cast(coll, k, f'v.k{i}')}" for i, k in enumerate(keys))
            columns = [list(column) for column in zip(*args, strict=True)]
            if action == "delete":
                await conn.execute(f"DELETE FROM {self._table(coll)} t USING {source} WHERE {where}", *columns)
                continue
            sets = ", ".join(f"{qi(c)} = {self._cast(coll, c, f'v.a{i}')}" for i, c in enumerate(cols))
            await conn.execute(f"UPDATE {self._table(coll)} t SET {sets} FROM {source} WHERE {where}", *columns)

    async def _apply_range(self, conn: asyncpg.Connection, run: list[PlanItem]) -> int:
        """DELETE or UPDATE the subject's rows inside a run of joined key ranges (constants replace non-NULLs).

        Returns the rows changed.
        """
        coll, action, assignments = run[0].collection, run[0].action, run[0].assignments
        sets, args = [], []
        if action == "update":
            for c, value in assignments.items():
                if value is None:
                    sets.append(f"{qi(c)} = NULL")
                    continue
                args.append(text_param(value))
                masked = self._cast(coll, c, f"${len(args)}")
                sets.append(f"{qi(c)} = CASE WHEN {qi(c)} IS NULL THEN NULL ELSE {masked} END")
        where, more = self._in_range(coll, run, len(args) + 1)
        if action == "delete":
            status = await conn.execute(f"DELETE FROM {self._table(coll)} WHERE {where}", *more)
        elif sets:
            status = await conn.execute(f"UPDATE {self._table(coll)} SET {', '.join(sets)} WHERE {where}",
                                        *args, *more)
        else:
            return 0
        return int(status.rsplit(" ", 1)[-1])

    def _in_range(self, coll: str, run: list[PlanItem], start: int) -> tuple[str, list[Any]]:
        """The condition "one of the subject's rows inside this run of joined key ranges"."""
        first, last = run[0].key_range, run[-1].key_range
        assert first is not None and last is not None
        where, args = self._selected(coll, first.selection, start)
        key = qi(first.field)
        for bound, op in ((first.low, ">="), (last.high, "<")):
            if bound is not None:
                args.append(text_param(bound))
                where += f" AND {key} {op} {self._cast(coll, first.field, f'${start + len(args) - 1}')}"
        return where, args

    def _cast(self, collection: str, column: str, param: str) -> str:
        return f"{param}::text::{self._columns[collection][column].cast}"

    async def _not_as_planned(self, conn: asyncpg.Connection, group: Group, args: list[list]) -> int:
        """How many planned rows differ from the plan: deleted ones present, masked ones changed."""
        coll, action, cols, keys = group
        names = [f"a{i}" for i in range(len(cols))] + [f"k{i}" for i in range(len(keys))]
        arrays = ", ".join(f"${i + 1}::text[]" for i in range(len(names)))
        join = " AND ".join(f"t.{qi(k)} = {self._cast(coll, k, f'v.k{i}')}" for i, k in enumerate(keys))
        sql = (f"SELECT count(*) FROM unnest({arrays}) AS v({', '.join(names)}) "
               f"JOIN {self._table(coll)} t ON {join}")
        if action == "update":
            sql += " WHERE " + " OR ".join(
                f"t.{qi(c)} IS DISTINCT FROM {self._cast(coll, c, f'v.a{i}')}" for i, c in enumerate(cols))
        return await conn.fetchval(sql, *[list(column) for column in zip(*args, strict=True)])

    async def _range_not_as_planned(self, conn: asyncpg.Connection, run: list[PlanItem]) -> int:
        """How many of the subject's rows inside a run of key ranges are not as planned: present, or unmasked."""
        coll, args = run[0].collection, []
        changed = []
        if run[0].action == "update":
            for c, value in run[0].assignments.items():
                if value is None:
                    changed.append(f"{qi(c)} IS NOT NULL")
                    continue
                args.append(text_param(value))
                changed.append(f"{qi(c)} <> {self._cast(coll, c, f'${len(args)}')}")
        where, more = self._in_range(coll, run, len(args) + 1)
        if changed:
            where += f" AND ({' OR '.join(changed)})"
        return await conn.fetchval(f"SELECT count(*) FROM {self._table(coll)} WHERE {where}", *args, *more)


def _kind(item: PlanItem) -> str:
    """How a transaction applies ``item``: ``row``, or a range ``counted`` when planned or ``uncounted``."""
    if item.key_range is None:
        return "row"
    return "counted" if item.key_range.rows is not None else "uncounted"


def range_runs(items: Sequence[PlanItem]) -> list[list[PlanItem]]:
    """Range items split into runs of consecutive ranges that one statement can apply on their outer bounds.

    A run's ranges share collection, change and selection, each starting where the one
    before it ends (as a collection's ranges are planned).
    """
    runs: list[list[PlanItem]] = []
    for item in items:
        assert item.key_range is not None
        if runs:
            last = runs[-1][-1]
            assert last.key_range is not None
            if (last.collection, last.action, last.assignments, last.key_range.field, last.key_range.selection,
                    last.key_range.high) == (item.collection, item.action, item.assignments, item.key_range.field,
                                             item.key_range.selection, item.key_range.low) \
                    and last.key_range.high is not None:
                runs[-1].append(item)
                continue
        runs.append([item])
    return runs
