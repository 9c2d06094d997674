"""``dsr backups reapply``: erase again, from a database restored out of a backup, everyone the ledger lists.

The erasure ledger (:mod:`activities.ledger`) holds no identifiers, only their keyed hashes. So the restored
database is scanned instead: every distinct value of every identity field its fideslang dataset declares is
hashed with the ledger's keys, and where a hash is in the ledger the subject is back. For each such ledger
subject (one request), the Postgres connector's erasure runs with the identities found in the restored database
itself, following the system's own erasure policy (what the policy retains stays retained), with a fresh
in-memory plan (request id ``reapply-<ledger id>``), and is then verified.

Output: one line per subject re-erased, naming the ledger id and counts per collection, never a value.
Entries recorded under a key that is no longer configured cannot be checked and count as failures.

Caveat: by default every ledger entry is replayed. Someone erased long ago who later signed up again has live
data that an old entry would match; when the restored backup was taken after such a sign-up, give ``--since``
(a time safely before the backup was taken) so that older entries, already reflected in it, are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from activities.ledger import ErasureLedger, identity_hmac, normalise
from connectors.contract import ConfigurationError, ConnectorError, Subject
from connectors.postgres import PostgresConnector
from connectors.postgres_config import qi
from connectors.testing import MemoryPlanStore
from workers.config import ConfigError, Settings

Wanted = tuple[str, str, str]
"""(identity type, key id, hmac)."""


@dataclass
class LedgerSubject:
    """The ledger entries of one erased subject (one request)."""

    first_id: int
    request_id: str
    hashes: set[Wanted] = field(default_factory=set)
    found: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Identity type -> the values in the restored database whose hashes matched."""


@dataclass
class ReapplyReport:
    """What a reapply did: lines for the operator (no personal data) and whether anything failed."""

    checked: int = 0
    reerased: int = 0
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every ledger subject found in the database was erased and verified."""
        return not self.failures


def postgres_system(settings: Settings, name: str | None) -> str:
    """The Postgres system whose dataset and policy describe the restored database.

    Raises:
        ConfigError: ``name`` is not a configured postgres system, or none is named and there is not exactly one.
    """
    postgres = [n for n, s in settings.systems.items() if s.type == "postgres"]
    if name is not None:
        if name not in postgres:
            raise ConfigError(f"--system {name}: no system of type postgres by that name "
                              f"(postgres systems: {', '.join(postgres) or 'none'})")
        return name
    if len(postgres) != 1:
        raise ConfigError("name the restored database's system with --system "
                          f"(postgres systems: {', '.join(postgres) or 'none'})")
    return postgres[0]


async def reapply(settings: Settings, database_url: str, *, ledger: ErasureLedger, system: str | None = None,
                  since: datetime | None = None, emit: Callable[[str], None] = print) -> ReapplyReport:
    """Erase again, in the database at ``database_url``, every ledger subject found in it; verify each.

    Raises:
        ConfigError: The system or its options cannot be used with this database.
        ConnectorError: The restored database cannot be read (a retry may help).
    """
    name = postgres_system(settings, system)
    options = {k: v for k, v in settings.systems[name].options().items() if k != "dsn_env"}
    options["dsn"] = database_url
    try:
        connector = PostgresConnector.from_options(name, options)
        await connector.open()
    except ConfigurationError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    report = ReapplyReport()
    try:
        subjects, unknown_keys = await _ledger_subjects(ledger, since)
        report.checked = len(subjects)
        for s in sorted(unknown_keys.values(), key=lambda s: s.first_id):
            report.failures.append(f"ledger entry {s.first_id}: recorded under a key no longer configured; "
                                   "cannot be checked")
            emit(report.failures[-1])
        await _scan(connector, database_url, ledger, subjects)
        for s in sorted(subjects.values(), key=lambda s: s.first_id):
            if s.found:
                await _erase_again(connector, s, report, emit)
    finally:
        await connector.close()
    summary = (f"{report.checked} erased subject(s) in the ledger, {report.reerased} found and erased again "
               f"in {name}, {len(report.failures)} failure(s)")
    report.lines.append(summary)
    emit(summary)
    return report


async def _ledger_subjects(ledger: ErasureLedger, since: datetime | None) -> tuple[dict[str, LedgerSubject],
                                                                                  dict[str, LedgerSubject]]:
    """The ledger's subjects by request id, and those with an entry under a key no longer configured."""
    subjects: dict[str, LedgerSubject] = {}
    unknown: dict[str, LedgerSubject] = {}
    async for e in ledger.entries():
        if since is not None and e.recorded_at < since:
            continue
        s = subjects.setdefault(e.request_id, LedgerSubject(first_id=e.id, request_id=e.request_id))
        s.hashes.add((e.identity_type, e.key_id, e.identity_hmac))
        if ledger.key_for(e.key_id) is None:
            unknown[e.request_id] = s
    return subjects, unknown


async def _scan(connector: PostgresConnector, database_url: str, ledger: ErasureLedger,
                subjects: dict[str, LedgerSubject]) -> None:
    """Hash every distinct identity value of the restored database; note the ledger subjects' values found."""
    wanted: dict[Wanted, list[LedgerSubject]] = defaultdict(list)
    for s in subjects.values():
        for h in s.hashes:
            wanted[h].append(s)
    kinds = {kind for kind, _, _ in wanted}
    keys = [(kid, key) for kid in sorted({kid for _, kid, _ in wanted}) if (key := ledger.key_for(kid))]
    if not wanted or not keys:
        return
    schema = connector.config.db_schema
    try:
        conn = await asyncpg.connect(database_url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ConnectorError(f"{connector.name}: cannot read the restored database: {type(exc).__name__}") from None
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for coll in connector.graph.collections.values():
                for fld in coll.identity_fields:
                    kind = fld.identity or ""
                    if kind not in kinds:
                        continue
                    col = qi(fld.name)
                    sql = f"SELECT DISTINCT {col}::text FROM {qi(schema)}.{qi(coll.name)} WHERE {col} IS NOT NULL"
                    async for rec in conn.cursor(sql, prefetch=1000):
                        value = rec[0]
                        for kid, key in keys:
                            for s in wanted.get((kind, kid, identity_hmac(key, kind, value)), ()):
                                s.found[kind].add(normalise(kind, value) if kind == "email" else value)
    finally:
        await conn.close()


async def _erase_again(connector: PostgresConnector, s: LedgerSubject, report: ReapplyReport,
                       emit: Callable[[str], None]) -> None:
    """Erase and verify the subject with the values found (one pass per variant of a value, rarely more than one)."""
    values = {kind: sorted(found) for kind, found in s.found.items()}
    masked: dict[str, int] = defaultdict(int)
    deleted: dict[str, int] = defaultdict(int)
    retained: dict[str, int] = defaultdict(int)
    try:
        for i in range(max(len(v) for v in values.values())):
            subject = Subject(request_id=f"reapply-{s.first_id}",
                              identities={kind: v[min(i, len(v) - 1)] for kind, v in values.items()})
            plan = MemoryPlanStore()
            out = await connector.erase(subject, plan, lambda _detail: None)
            check = await connector.verify_erasure(subject, plan)
            for target, counts in ((masked, out.masked), (deleted, out.deleted)):
                for coll, n in counts.items():
                    target[coll] += n
            for item in out.retained:
                retained[item.collection] += item.count
            if not check.ok:
                left = ", ".join(f"{c} ({n})" for c, n in sorted(check.remaining.items()) if n)
                raise ConnectorError(f"erasable data remains after erasing again: {left}", retryable=False)
    except ConnectorError as exc:
        report.failures.append(f"ledger entry {s.first_id}: {str(exc).splitlines()[0]}")
        emit(report.failures[-1])
        return
    report.reerased += 1

    def fmt(counts: dict[str, int]) -> str:
        return ", ".join(f"{c}={n}" for c, n in sorted(counts.items()) if n) or "none"

    line = (f"ledger entry {s.first_id}: erased again: masked {fmt(masked)}; deleted {fmt(deleted)}; "
            f"retained {fmt(retained)}")
    report.lines.append(line)
    emit(line)
