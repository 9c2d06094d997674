"""The rights besides access, export and erasure, for :class:`connectors.postgres.PostgresConnector`.

Each action finds the subject's rows as export and erasure do (the dataset's traversal) and
changes them in one repeatable-read transaction, so it applies wholly or not at all, and
running it again gives the same rows. ``ActionOutcome.changed`` counts the subject's rows
each action leaves in the state asked for, so a retry reports the same counts as the first
run (lifting, which removes tags, counts the tags it removed).

- **rectify** (Art. 16): a correction keyed by a ``user.*`` data category is written to every
  declared field carrying exactly that category, on the subject's *own* rows: rows found by
  their identity, or reached from it and not also reached from another person's rows (the
  rows erasure retains as shared). Keys, read-only fields and reference fields are never
  written (they join rows). Collections whose identity field changes come last.
- **restrict / lift_restriction** (Art. 18, Recital 67): the restriction table tags every
  reached row, shared ones included (restriction protects, it does not destroy), once per
  reference; the optional flag column mirrors "some reference restricts this row".
- **stop_processing** (Art. 7(3), 21) and **deactivate**: the configured switches are set on
  the subject's own rows; nothing is deleted.

Options: see :mod:`connectors.postgres_config`. Capabilities: :func:`declared_capabilities`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import asyncpg

from connectors.contract import (
    ActionOutcome,
    Capability,
    ConfigurationError,
    ConnectorError,
    Subject,
    UnsupportedError,
)
from connectors.fides import DatasetGraph, Edge, Reach
from connectors.masking import ErasurePolicy
from connectors.postgres_config import (
    RESTRICTION_COLUMNS,
    Column,
    FieldSetting,
    PostgresConfig,
    RestrictionConfig,
    db_errors,
    fits,
    qi,
)
from connectors.values import text_param

Assignments = Mapping[str, Mapping[str, Any]]
"""Values to write, by collection then field."""


def _literal(text: str) -> str:
    """An SQL string literal (for column names used as JSON keys; values always travel as parameters)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def rectifiable(graph: DatasetGraph, policy: ErasurePolicy) -> dict[str, list[tuple[str, str]]]:
    """Fields a correction may write, by ``user.*`` data category, as (collection, field).

    Declared fields only; never a primary key (the dataset's or the table's), a read-only
    field or a field at either end of a reference.
    """
    out: dict[str, list[tuple[str, str]]] = {}
    for name, spec in graph.collections.items():
        locked = {*spec.primary_key, *policy.collections[name].primary_key, *graph.linked(name)}
        for fld in spec.fields.values():
            if fld.read_only or fld.name in locked:
                continue
            for category in fld.categories:
                if category == "user" or category.startswith("user."):
                    out.setdefault(category, []).append((name, fld.name))
    return out


def declared_capabilities(
    config: PostgresConfig, graph: DatasetGraph, policy: ErasurePolicy
) -> frozenset[Capability]:
    """What a configured connector declares.

    Locate, export and erase always; rectify when the dataset declares a field a correction
    may write; restrict with the ``restriction`` option; stop_processing with ``purposes``;
    deactivate with ``deactivation``.
    """
    caps = {Capability.LOCATE, Capability.EXPORT, Capability.ERASE}
    caps |= {Capability.RECTIFY} if rectifiable(graph, policy) else set()
    caps |= {Capability.RESTRICT} if config.restriction is not None else set()
    caps |= {Capability.STOP_PROCESSING} if config.purposes else set()
    caps |= {Capability.DEACTIVATE} if config.deactivation else set()
    return frozenset(caps)


def _by_collection(settings: Iterable[FieldSetting]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in settings:
        out.setdefault(s.collection, {})[s.field] = s.value
    return out


class PostgresRights:
    """Rectify, restrict, lift, stop processing and deactivate; mixed into ``PostgresConnector``."""

    _restriction_ready = False
    """Whether this instance has made sure the restriction table exists."""

    if TYPE_CHECKING:  # provided by PostgresConnector
        name: str
        config: PostgresConfig
        graph: DatasetGraph
        policy: ErasurePolicy
        _columns: dict[str, dict[str, Column]]

        def _snapshot(self, readonly: bool = True) -> AbstractAsyncContextManager[asyncpg.Connection]: ...
        async def _reach(self, conn: asyncpg.Connection, subject: Subject) -> Reach: ...
        async def _shared(self, conn: asyncpg.Connection, reach: Reach, colls: Iterable[str]) -> dict[Edge, set]: ...
        def _predicate(self, reach: Reach, collection: str, start: int = 1) -> tuple[str, list[Any]]: ...
        def _part(self, collection: str, field: str, identity: bool, n: int) -> str: ...
        def _identity(self, collection: str, field: str, subject: Subject) -> Hashable | None: ...
        def _table(self, collection: str) -> str: ...
        def _cast(self, collection: str, column: str, param: str) -> str: ...

    async def rectify(self, subject: Subject, corrections: Mapping[str, str]) -> ActionOutcome:
        """Write each correction to the declared fields of exactly its data category, on the subject's own rows.

        A category this system holds no writable field of is reported in ``ignored``.

        Raises:
            ConnectorError: Not retryable: a value does not fit its column, or two
                corrections disagree about one field (the message names the field, never the value).
        """
        writable = rectifiable(self.graph, self.policy)
        assignments: dict[str, dict[str, Any]] = {}
        ignored = [category for category in corrections if category not in writable]
        for category, value in corrections.items():
            for coll, fld in writable.get(category, ()):
                if assignments.setdefault(coll, {}).setdefault(fld, value) != value:
                    raise ConnectorError(f"{self.name}: two corrections disagree about {coll}.{fld}", retryable=False)
        outcome = await self._write_own("rectify", subject, assignments, check=True)
        outcome.ignored = ignored
        return outcome

    async def stop_processing(self, subject: Subject, purpose: str) -> ActionOutcome:
        """Set the switches configured for ``purpose`` on the subject's own rows.

        Raises:
            UnsupportedError: This system has no setting for ``purpose`` (the workflow reports it not applicable).
        """
        settings = self.config.purposes.get(purpose)
        if not settings:
            raise UnsupportedError(f"{self.name} does not process data for purpose {purpose!r}")
        return await self._write_own("stop processing", subject, _by_collection(settings))

    async def deactivate(self, subject: Subject) -> ActionOutcome:
        """Set the deactivation switches on the subject's own rows; nothing is deleted.

        Raises:
            UnsupportedError: No ``deactivation`` option is configured.
        """
        if not self.config.deactivation:
            raise UnsupportedError(f"{self.name} has no deactivation setting")
        return await self._write_own("deactivate", subject, _by_collection(self.config.deactivation))

    async def restrict(self, subject: Subject, reference: str) -> ActionOutcome:
        """Tag every row the subject's traversal reaches as restricted by ``reference`` (and set the flag).

        Raises:
            UnsupportedError: No ``restriction`` option is configured.
            ConfigurationError: A reached collection has no primary key to tag rows by.
        """
        restriction = self._restriction()
        tags, flag = self._qualified(restriction.table), restriction.flag_column
        outcome = ActionOutcome()
        async with db_errors(self.name, "restrict"):
            await self._create_restriction_table(tags)
            async with self._snapshot(readonly=False) as conn:
                reach = await self._reach(conn, subject)
                for coll in reach.order:
                    key = self._key_json(coll)
                    where, args = self._predicate(reach, coll, start=3)
                    outcome.changed[coll] = await conn.fetchval(
                        f"WITH mine AS (SELECT {key} AS key FROM {self._table(coll)} WHERE {where}), "
                        f"tagged AS (INSERT INTO {tags} ({', '.join(RESTRICTION_COLUMNS)}) "
                        f"SELECT $1, m.key, $2, now() FROM mine m WHERE NOT EXISTS (SELECT 1 FROM {tags} r "
                        f"WHERE r.collection = $1 AND r.key = m.key AND r.reference = $2) ON CONFLICT DO NOTHING) "
                        f"SELECT count(*) FROM mine", coll, reference, *args)
                    if flag and flag in self._columns[coll]:
                        where, args = self._predicate(reach, coll)
                        await conn.execute(f"UPDATE {self._table(coll)} SET {qi(flag)} = true WHERE {where}", *args)
                        outcome.fields.append(f"{coll}.{flag}")
        return outcome

    async def lift_restriction(self, subject: Subject, reference: str) -> ActionOutcome:
        """Remove the tags of ``reference``; clear the flag of rows no other reference still restricts.

        Every tag of ``reference`` in this dataset's collections goes, whether or not the
        subject's traversal still reaches the row; tags of other references stay.

        Raises:
            UnsupportedError: No ``restriction`` option is configured.
        """
        restriction = self._restriction()
        tags, flag = self._qualified(restriction.table), restriction.flag_column
        outcome = ActionOutcome()
        async with db_errors(self.name, "lift restriction"), self._snapshot(readonly=False) as conn:
            if await conn.fetchval("SELECT to_regclass($1)", tags) is None:
                return outcome
            released: dict[str, list[str]] = {}
            for r in await conn.fetch(f"DELETE FROM {tags} WHERE reference = $1 AND collection = ANY($2::text[]) "
                                      "RETURNING collection, key::text", reference, list(self.graph.collections)):
                released.setdefault(r[0], []).append(r[1])
            for coll, keys in released.items():
                outcome.changed[coll] = len(keys)
                if not flag or flag not in self._columns[coll]:
                    continue
                pk = self.policy.collections[coll].primary_key
                picked = ", ".join(self._cast(coll, k, f"(k ->> {_literal(k)})") for k in pk)
                await conn.execute(
                    f"UPDATE {self._table(coll)} t SET {qi(flag)} = false "
                    f"WHERE ({', '.join(f't.{qi(k)}' for k in pk)}) IN (SELECT {picked} FROM unnest($1::jsonb[]) k) "
                    f"AND NOT EXISTS (SELECT 1 FROM {tags} r WHERE r.collection = $2 "
                    f"AND r.key = {self._key_json(coll, 't.')})", keys, coll)
                outcome.fields.append(f"{coll}.{flag}")
        return outcome

    def _restriction(self) -> RestrictionConfig:
        if self.config.restriction is None:
            raise UnsupportedError(f"{self.name} has no restriction setting")
        return self.config.restriction

    def _qualified(self, table: str) -> str:
        return f"{qi(self.config.db_schema)}.{qi(table)}"

    async def _create_restriction_table(self, tags: str) -> None:
        """Create the restriction table when missing (once per instance; concurrent creators take a lock)."""
        if self._restriction_ready:
            return
        async with self._snapshot(readonly=False) as conn:
            if await conn.fetchval("SELECT to_regclass($1)", tags) is None:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", tags)
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {tags} (collection text NOT NULL, key jsonb NOT NULL, "
                                   "reference text NOT NULL, restricted_at timestamptz NOT NULL DEFAULT now(), "
                                   "PRIMARY KEY (collection, key, reference))")
        self._restriction_ready = True

    def _key_json(self, coll: str, prefix: str = "") -> str:
        """SQL building a row's primary key as a JSON object, e.g. ``{"id": 3}``."""
        pk = self.policy.collections[coll].primary_key
        if not pk:
            raise ConfigurationError(f"{self.name}: {coll} has no primary key (in dataset or table)")
        return "jsonb_build_object(" + ", ".join(f"{_literal(k)}, {prefix}{qi(k)}" for k in pk) + ")"

    def _own(self, subject: Subject, reach: Reach, shared: dict[Edge, set], coll: str,
             start: int) -> tuple[str, list[Any]]:
        """SQL selecting the subject's own rows of ``coll``: reached, and found by an identity or not shared.

        The rule erasure applies row by row (``_decisions``), as a condition: a row is shared
        when another person's rows reach it, unless the subject's identity is on it.
        """
        where, args = self._predicate(reach, coll, start)
        theirs = []
        for edge in self.graph.incoming(coll):
            if shared.get(edge):
                theirs.append(self._part(coll, edge.target_field, False, start + len(args)))
                args.append(list(shared[edge]))
        if not theirs:
            return where, args
        mine = []
        for fld in self.graph.collections[coll].identity_fields:
            value = self._identity(coll, fld.name, subject)
            if value is not None:
                mine.append(self._part(coll, fld.name, True, start + len(args)))
                args.append([value])
        own = " OR ".join(mine) or "false"
        return f"{where} AND (coalesce({own}, false) OR NOT coalesce({' OR '.join(theirs)}, false))", args

    async def _check_values(self, conn: asyncpg.Connection, assignments: Assignments) -> None:
        for coll, values in assignments.items():
            for fld, value in values.items():
                column = self._columns[coll][fld]
                spec = self.graph.collections[coll].fields.get(fld)
                limits = [n for n in (column.max_length, spec.length if spec else None) if n]
                if not await fits(conn, column, value, min(limits, default=None)):
                    most = f", at most {min(limits)} characters" if limits and column.family == "text" else ""
                    raise ConnectorError(f"{self.name}: the corrected value does not fit {coll}.{fld} "
                                         f"({column.sql_type}{most})", retryable=False)

    async def _write_own(self, operation: str, subject: Subject, assignments: Assignments, *,
                         check: bool = False) -> ActionOutcome:
        """Set fields on the subject's own rows in one transaction: leaves first, identity changes last."""
        outcome = ActionOutcome()
        async with db_errors(self.name, operation), self._snapshot(readonly=False) as conn:
            if check:
                await self._check_values(conn, assignments)
            reach = await self._reach(conn, subject)
            specs = {c: self.graph.collections[c].fields for c in assignments}
            identity = {c for c, values in assignments.items() if any(specs[c][f].identity for f in values
                                                                      if f in specs[c])}
            colls = sorted((c for c in reversed(reach.order) if c in assignments), key=lambda c: c in identity)
            shared = await self._shared(conn, reach, colls)
            for coll in colls:
                fields = list(assignments[coll])
                sets = ", ".join(f"{qi(f)} = {self._cast(coll, f, f'${i + 1}')}" for i, f in enumerate(fields))
                where, args = self._own(subject, reach, shared, coll, start=len(fields) + 1)
                status = await conn.execute(f"UPDATE {self._table(coll)} SET {sets} WHERE {where}",
                                            *[text_param(assignments[coll][f]) for f in fields], *args)
                if count := int(status.rsplit(" ", 1)[-1]):
                    outcome.changed[coll] = count
                    outcome.fields += [f"{coll}.{f}" for f in fields]
        return outcome
