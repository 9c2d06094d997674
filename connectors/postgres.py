"""The application-database connector: a PostgreSQL database described by a fideslang dataset.

Locate, export and erasure follow the dataset (see :mod:`connectors.fides`): identity
fields are entry points and references are followed to a fixed point, in one
repeatable-read snapshot. Exports hold only the fields the dataset declares; PostgreSQL
serialises them with COPY where the sink allows (see :mod:`connectors.postgres_copy`),
else they are streamed with a server-side cursor. Erasure is planned once from the
original values (see :mod:`connectors.masking`) into the orchestrator's :class:`PlanStore`,
then applied in batches, one transaction each, leaves first (identity rows last), each
batch as a few set-based statements; a crashed run resumes at the first batch not
marked done, and applying an item twice gives the same row (key ranges and the
transactions: :mod:`connectors.postgres_erasure`). The other rights
(rectification, restriction, stop of processing, deactivation) are in
:mod:`connectors.postgres_rights`; the options and their checks in
:mod:`connectors.postgres_config`.

Values never enter SQL text: they travel as ``$n`` parameters; identifiers are quoted.
Error messages name SQLSTATEs, tables and columns, never values (they may be personal data).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import asyncpg

from connectors.contract import (
    Capability,
    ConfigurationError,
    Connector,
    ConnectorError,
    ErasureOutcome,
    ExportOutcome,
    ExportSink,
    LocateOutcome,
    PlanItem,
    PlanStore,
    ProgressReporter,
    Subject,
    VerificationOutcome,
)
from connectors.fides import DatasetGraph, Edge, Input, Reach, comparable, load_dataset, traverse
from connectors.masking import ErasurePolicy, Tally, statements
from connectors.postgres_config import (
    Column,
    PostgresConfig,
    check_policy,
    check_rights,
    check_tables,
    db_errors,
    qi,
    read_schema,
)
from connectors.postgres_copy import (
    JSON_COPY,
    SESSION,
    SETTING,
    CsvStream,
    JsonStream,
    SerialisedWriter,
    csv_sql,
    json_sql,
    ql,
    serialisable,
)
from connectors.postgres_erasure import PostgresErasure, range_runs
from connectors.postgres_rights import PostgresRights, declared_capabilities
from connectors.values import jsonable

PLAN_CHUNK = 1000
"""Plan items per ``PlanStore.save`` call."""
TWIN_WAIT = 0.5
"""Seconds an export waits for a second connection (for its parallel COPYs) before going without."""
_ARRAYS = {"int": "bigint[]", "text": "text[]", "numeric": "numeric[]", "uuid": "uuid[]"}


class PostgresConnector(PostgresErasure, PostgresRights, Connector):
    """A PostgreSQL application database, described by a fideslang dataset, erased by a policy.

    ``capabilities`` (per instance) add to locate, export and erase what the options configure:
    see :func:`connectors.postgres_rights.declared_capabilities`.
    """

    type_name = "postgres"
    capabilities = frozenset({Capability.LOCATE, Capability.EXPORT, Capability.ERASE})
    """What every instance can do; an instance declares more when configured."""

    def __init__(self, name: str, config: PostgresConfig) -> None:
        """Load the dataset and check the policy against it (no connection yet).

        Raises:
            ConfigurationError: The dataset or the policy cannot be used.
        """
        super().__init__(name)
        self.config = config
        self.graph: DatasetGraph = load_dataset(config.dataset, config.dataset_key)
        self._secret, self._secret_hint = config.hash_secret()
        self.policy = self._policy({})
        self._pool: asyncpg.Pool | None = None
        self._columns: dict[str, dict[str, Column]] = {}
        self.capabilities = declared_capabilities(config, self.graph, self.policy)

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> PostgresConnector:
        """Build from the options of ``[systems.<name>]``.

        Raises:
            ConfigurationError: One line saying what is wrong with the options.
        """
        try:
            return cls(name, PostgresConfig.parse(options))
        except ConfigurationError as exc:
            raise ConfigurationError(f"systems.{name}: {exc}") from None

    def _policy(self, primary_keys: Mapping[str, tuple[str, ...]]) -> ErasurePolicy:
        return ErasurePolicy(self.graph, self.config.policy, hash_secret=self._secret,
                             secret_hint=self._secret_hint, primary_keys=primary_keys)

    async def open(self) -> None:
        """Create the pool, read the tables' columns and keys, and check the options against them."""
        if self._pool is not None:
            return
        async with db_errors(self.name, "open"):
            try:
                self._pool = await asyncpg.create_pool(self.config.resolve_dsn(), min_size=1, max_size=4)
            except ValueError:  # a malformed DSN; its text may hold a password, so it is not repeated
                raise ConfigurationError(f"{self.name}: the DSN is not a valid PostgreSQL URL") from None
            try:
                await self._load_schema(self._pool)
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _load_schema(self, pool: asyncpg.Pool) -> None:
        schema, restriction = self.config.db_schema, self.config.restriction
        db = await read_schema(pool, schema, [*self.graph.collections, *([restriction.table] if restriction else [])])
        check_tables(self.name, self.graph, db, schema)
        self._columns = db.columns
        self.policy = self._policy(db.keys)
        check_policy(self.name, self.policy, db, schema)
        await check_rights(self.name, self.config, self.graph, db, pool)
        self.capabilities = declared_capabilities(self.config, self.graph, self.policy)

    @asynccontextmanager
    async def _snapshot(self, readonly: bool = True) -> AsyncIterator[asyncpg.Connection]:
        """One repeatable-read transaction: a consistent snapshot (and, for writers, one atomic change)."""
        if self._pool is None:
            raise ConnectorError(f"{self.name}: call open() first", retryable=False)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=readonly):
            yield conn

    def _table(self, collection: str) -> str:
        return f"{qi(self.config.db_schema)}.{qi(collection)}"

    def _norm(self, collection: str, field: str, value: Any, identity: str | None = None) -> Hashable | None:
        family = self._columns[collection][field].family
        return comparable(value, family, casefold=identity == "email" and family == "text")

    def _identity(self, collection: str, field: str, subject: Subject) -> Hashable | None:
        """The subject's identity for an identity field, as that field is compared (None if absent)."""
        kind = self.graph.collections[collection].fields[field].identity or ""
        return self._norm(collection, field, subject.identities.get(kind), kind)

    def _part(self, collection: str, field: str, identity: bool, n: int) -> str:
        """The condition "``field`` equals a value of array parameter ``$n``"."""
        lhs, array = self._compared(collection, field, identity)
        return f"{lhs} = ANY(${n}::{array})"

    def _compared(self, collection: str, field: str, identity: bool) -> tuple[str, str]:
        """How ``field`` is compared: (the expression compared, the type of the array of values)."""
        col, ref = self._columns[collection][field], qi(field)
        email = identity and self.graph.collections[collection].fields[field].identity == "email"
        if email and col.family == "text":
            return f"lower({ref})", "text[]"
        if col.family == "other":
            return ref, f"text[]::{col.cast}[]"
        return ref, _ARRAYS[col.family]

    def _predicate(self, reach: Reach, collection: str, start: int = 1) -> tuple[str, list[Any]]:
        """The subject's rows of ``collection``: any input matching any value reached for it."""
        parts, args = [], []
        for field, identity, values in reach.of(collection):
            parts.append(self._part(collection, field, identity, start + len(args)))
            args.append(list(values))
        return ("(" + " OR ".join(parts) + ")" if parts else "FALSE"), args

    async def _reach(self, conn: asyncpg.Connection, subject: Subject) -> Reach:
        seeds: dict[Input, set[Any]] = {}
        for coll in self.graph.collections.values():
            for fld in coll.identity_fields:
                value = self._identity(coll.name, fld.name, subject)
                if value is not None:
                    seeds[(coll.name, fld.name, True)] = {value}

        async def fetch(inp: Input, values: list[Any], outputs: list[str]) -> tuple[bool, dict[str, list]]:
            coll, fld, identity = inp
            where = f"FROM {self._table(coll)} WHERE {self._part(coll, fld, identity, 1)}"
            if not outputs:  # a leaf: whether a row exists, without reading every one (a subject may have millions)
                return await conn.fetchval(f"SELECT EXISTS (SELECT 1 {where})", values), {}
            aggs = ", ".join(f"array_agg(DISTINCT {qi(o)})" for o in outputs)
            row = await conn.fetchrow(f"SELECT count(*), {aggs} {where}", values)
            found = {o: [v for v in row[i + 1] or () if v is not None] for i, o in enumerate(outputs)}
            return row[0] > 0, found

        return await traverse(self.graph, seeds, fetch, self._norm)

    def _select(self, reach: Reach, collection: str, columns: Sequence[str]) -> tuple[str, list[Any]]:
        where, args = self._predicate(reach, collection)
        keys = self.policy.collections[collection].primary_key
        order = " ORDER BY " + ", ".join(qi(k) for k in keys) if keys else ""
        return f"SELECT {', '.join(qi(c) for c in columns)} FROM {self._table(collection)} WHERE {where}{order}", args

    async def locate(self, subject: Subject) -> LocateOutcome:
        """Count the subject's rows per collection (only collections holding some)."""
        found: dict[str, int] = {}
        async with db_errors(self.name, "locate"), self._snapshot() as conn:
            reach = await self._reach(conn, subject)
            for coll in reach.order:
                where, args = self._predicate(reach, coll)
                sql = f"SELECT count(*) FROM {self._table(coll)} WHERE {where}"
                found[coll] = await conn.fetchval(sql, *args)
        return LocateOutcome(found={c: n for c, n in found.items() if n})

    async def export(self, subject: Subject, sink: ExportSink) -> ExportOutcome:
        """Stream the subject's rows, declared fields only, into ``sink``, one collection at a time.

        Where the sink's writer takes serialised rows and the collection's types allow,
        PostgreSQL serialises them (see :mod:`connectors.postgres_copy`), in two COPYs at
        once on a second connection that shares the snapshot; otherwise rows come from a
        server-side cursor and the sink serialises them.
        """
        exported: dict[str, int] = {}
        async with db_errors(self.name, "export"), self._snapshot() as conn, AsyncExitStack() as stack:
            reach = await self._reach(conn, subject)
            twin: asyncpg.Connection | None = None
            for coll in reach.order:
                fields = list(self.graph.collections[coll].fields)
                exported[coll] = 0
                async with sink.collection(coll, fields) as writer:
                    if serialisable(fields, self._columns[coll]) and isinstance(writer, SerialisedWriter):
                        if twin is None:
                            twin = await stack.enter_async_context(self._twin(conn))
                        exported[coll] = await self._copy_out(conn, twin, reach, coll, fields, writer)
                        continue
                    sql, args = self._select(reach, coll, fields)
                    async for rec in conn.cursor(sql, *args, prefetch=self.config.batch_size):
                        await writer.write(dict(zip(fields, map(jsonable, rec.values()), strict=True)))
                        exported[coll] += 1
        return ExportOutcome(exported=exported)

    @asynccontextmanager
    async def _twin(self, conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
        """A second read-only connection seeing exactly ``conn``'s snapshot, or ``conn`` if the pool has none.

        Never waiting long for the pool keeps concurrent exports (each holding one
        connection) from waiting for each other's: they then run their COPYs one by one.
        """
        assert self._pool is not None
        try:
            twin = await self._pool.acquire(timeout=TWIN_WAIT)
        except TimeoutError:
            yield conn
            return
        try:
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            async with twin.transaction(isolation="repeatable_read", readonly=True):
                await twin.execute(f"SET TRANSACTION SNAPSHOT {ql(snapshot)}")
                yield twin
        finally:
            await self._pool.release(twin)

    async def _copy_out(self, conn: asyncpg.Connection, twin: asyncpg.Connection, reach: Reach,
                        collection: str, fields: list[str], writer: SerialisedWriter) -> int:
        """The collection's rows, serialised by PostgreSQL, into ``writer``: JSON on ``conn``, CSV on ``twin``."""
        parts, settings, args = [], [f"set_config({ql(k)}, {ql(v)}, true)" for k, v in SESSION.items()], []
        for field, identity, values in reach.of(collection):
            lhs, array = self._compared(collection, field, identity)
            n = len(args) + 1
            setting = ql(SETTING.format(n=n))
            settings.append(f"set_config({setting}, ${n}::{array}::text, true)")
            parts.append(f"{lhs} = ANY(ARRAY(SELECT unnest(current_setting({setting})::{array})))")
            args.append(list(values))
        if not parts:
            return 0
        for c in {conn, twin}:
            await c.fetchval(f"SELECT {', '.join(settings)}", *args)
        keys = self.policy.collections[collection].primary_key
        order = " ORDER BY " + ", ".join(qi(k) for k in keys) if keys else ""
        rows = f"FROM {self._table(collection)} WHERE {' OR '.join(parts)}{order}"
        columns = self._columns[collection]
        json_out, csv_out = JsonStream(writer), CsvStream(writer)
        copies = (partial(conn.copy_from_query, f"SELECT {json_sql(fields, columns)} {rows}", output=json_out,
                          **JSON_COPY),
                  partial(twin.copy_from_query, f"SELECT {csv_sql(fields, columns)} {rows}", output=csv_out,
                          format="csv"))
        if twin is conn:
            statuses = [await copy() for copy in copies]
        else:  # each COPY runs to its end (cancelling one mid-stream can hang): then the first failure
            statuses = await asyncio.gather(*(copy() for copy in copies), return_exceptions=True)
            for result in statuses:
                if isinstance(result, BaseException):
                    raise result
        json_out.finish()
        csv_out.finish()
        counts = {int(str(status).rsplit(" ", 1)[-1]) for status in statuses}  # "COPY <rows>"
        if len(counts) != 1:  # one snapshot: cannot happen unless the server misbehaves
            raise ConnectorError(f"{self.name}: the JSON and CSV exports of {collection} differ in rows")
        exported = counts.pop()
        writer.count_rows(exported)
        return exported
    async def _shared(self, conn: asyncpg.Connection, reach: Reach, colls: Iterable[str]) -> dict[Edge, set]:
        """Per edge B.g -> C.f into ``colls``: values of C.f that rows of B not the subject's also hold."""
        shared: dict[Edge, set[Any]] = {}
        for coll in colls:
            where, args = self._predicate(reach, coll)
            inputs = reach.of(coll)
            for edge in self.graph.incoming(coll):
                if len(inputs) == 1 and inputs[0][0] == edge.target_field:
                    # Rows found by this field alone hold only values reached for it: no need to read them all.
                    # Reached values no row holds cannot make a row shared.
                    mine = list(inputs[0][2])
                else:
                    mine = await conn.fetchval(f"SELECT array_agg(DISTINCT {qi(edge.target_field)}) "
                                               f"FROM {self._table(coll)} WHERE {where}", *args)
                values = {self._norm(edge.source, edge.source_field, v) for v in mine or ()} - {None}
                if not values:
                    continue
                theirs_where, theirs_args = self._predicate(reach, edge.source, start=2)
                theirs = await conn.fetchval(
                    f"SELECT array_agg(DISTINCT {qi(edge.source_field)}) FROM {self._table(edge.source)} "
                    f"WHERE {self._part(edge.source, edge.source_field, False, 1)} "
                    f"AND NOT coalesce({theirs_where}, false)", list(values), *theirs_args)
                shared[edge] = {self._norm(coll, edge.target_field, v) for v in theirs or ()} - {None}
        return shared

    async def _acting(
        self, conn: asyncpg.Connection, subject: Subject
    ) -> tuple[Reach, list[tuple[str, list[tuple[Edge, set]]]]]:
        """The subject's reach, and the collections the policy acts on, leaves first, each with its shared edges."""
        reach = await self._reach(conn, subject)
        acting = [c for c in reversed(reach.order) if self.policy.collections[c].acts]
        shared = await self._shared(conn, reach, acting)
        out = []
        for coll in acting:
            if not self.policy.collections[coll].primary_key:
                raise ConfigurationError(f"{self.name}: {coll} has no primary key (in dataset or table)")
            out.append((coll, [(e, shared[e]) for e in self.graph.incoming(coll) if shared.get(e)]))
        return reach, out

    async def _rows(
        self, conn: asyncpg.Connection, subject: Subject, reach: Reach, coll: str,
        edges: list[tuple[Edge, set]], exclude: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[tuple[dict[str, Any], PlanItem]]:
        """The subject's rows of ``coll`` the policy acts on, each with its plan item.

        ``exclude`` is a key range's stored selection: rows it selects are left out.
        """
        cp, spec = self.policy.collections[coll], self.graph.collections[coll]
        mine = [(f.name, f.identity, self._identity(coll, f.name, subject)) for f in spec.identity_fields]
        cols = list(dict.fromkeys([*cp.primary_key, *spec.fields]))
        where, args = self._predicate(reach, coll)
        if exclude is not None:
            excluded, more = self._selected(coll, exclude, len(args) + 1)
            where, args = f"{where} AND NOT coalesce({excluded}, false)", [*args, *more]
        sql = (f"SELECT {', '.join(qi(c) for c in cols)} FROM {self._table(coll)} WHERE {where} "
               f"ORDER BY {', '.join(qi(k) for k in cp.primary_key)}")
        async for rec in conn.cursor(sql, *args, prefetch=self.config.batch_size):
            row = dict(zip(cols, rec.values(), strict=True))
            own = any(v is not None and self._norm(coll, f, row[f], t) == v for f, t, v in mine)
            is_shared = not own and any(self._norm(coll, e.target_field, row[e.target_field]) in values
                                        for e, values in edges)
            item = cp.decide(row, shared=is_shared)
            if item is not None:
                yield row, item

    async def _plan(self, conn: asyncpg.Connection, subject: Subject) -> AsyncIterator[PlanItem]:
        """The plan, leaves first: key ranges where all of a collection's rows get one change, else one item a row."""
        reach, acting = await self._acting(conn, subject)
        for coll, edges in acting:
            template = self._range_template(reach, coll, edges)
            if template is None:
                async for _, item in self._rows(conn, subject, reach, coll, edges):
                    yield item
                continue
            async for item in self._ranges(conn, coll, template):
                yield item

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Plan once (unless ``plan`` is sealed), then apply the pending items in batches.

        The counts come from the whole plan (ranges counted as they are applied, from the
        store), so a second run reports the same ones; ``batches`` counts the transactions
        this run applied. Progress reports are ``{"planned": rows}`` while planning (rows
        counted so far), then ``{"batches": n, "rows": m}`` per transaction.
        """
        tally: Tally | None = None  # counted while planning; a run that finds the plan sealed reads it
        uncounted = False
        async with db_errors(self.name, "erase"):
            if not await plan.has_plan():
                chunk: list[PlanItem] = []
                planned, tally, uncounted = 0, Tally(), False
                async with self._snapshot() as conn:
                    async for item in self._plan(conn, subject):
                        chunk.append(item)
                        tally.add(item)
                        if item.key_range is not None and item.key_range.rows is None:
                            uncounted = True
                        if len(chunk) >= PLAN_CHUNK:
                            await plan.save(chunk)
                            planned, chunk = planned + sum(i.rows for i in chunk), []
                            progress({"planned": planned})
                await plan.save(chunk)
                await plan.seal()
                progress({"planned": planned + sum(i.rows for i in chunk)})
            batches = await self._apply(plan, progress)
            if tally is None or uncounted:  # ranges counted as they were applied: their counts are in the store
                tally = Tally()
                async for item in plan.items():
                    tally.add(item)
        return ErasureOutcome(masked=dict(tally.masked), deleted=dict(tally.deleted), retained=tally.retained,
                              batches=batches)

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Check each planned row (or key range) is as planned, then look the subject up again for what it missed.

        Remaining: planned rows not as planned, the subject's rows inside planned key
        ranges not as planned, and rows found now that the plan does not hold and the
        policy would still change. Retained: the plan's retained items, and rows found
        now that the policy keeps.
        """
        remaining: dict[str, int] = {}
        tally, planned = Tally(), set[tuple[Any, ...]]()
        ranges: list[PlanItem] = []
        async with db_errors(self.name, "verify"), self._snapshot() as conn:
            batch: list[PlanItem] = []
            async for item in plan.items():
                tally.add(item)
                if item.key_range is not None:
                    ranges.append(item)
                    continue
                planned.add((item.collection, *sorted(item.key.items())))
                batch.append(item)
                if len(batch) >= self.config.batch_size:
                    await self._check(conn, batch, remaining)
                    batch = []
            await self._check(conn, batch, remaining)
            for run in range_runs(ranges):
                remaining[run[0].collection] = (remaining.get(run[0].collection, 0)
                                                + await self._range_not_as_planned(conn, run))
            selections = {item.collection: item.key_range.selection for item in ranges if item.key_range}
            reach, acting = await self._acting(conn, subject)
            for coll, edges in acting:  # rows a planned range selects were counted above
                async for row, item in self._rows(conn, subject, reach, coll, edges, selections.get(coll)):
                    if (item.collection, *sorted(item.key.items())) in planned:
                        continue
                    changes = any(jsonable(row[f]) != v for f, v in item.assignments.items())
                    if item.action == "delete" or changes:
                        remaining[item.collection] = remaining.get(item.collection, 0) + 1
                    elif item.ground:
                        tally.add(item)
        remaining = {c: n for c, n in remaining.items() if n}
        return VerificationOutcome(remaining=remaining, retained=tally.retained)

    async def _check(
        self, conn: asyncpg.Connection, items: list[PlanItem], remaining: dict[str, int]
    ) -> None:
        """Add the planned rows of ``items`` that are not as planned to ``remaining``."""
        for group, args in statements(items).items():
            remaining[group[0]] = remaining.get(group[0], 0) + await self._not_as_planned(conn, group, args)
