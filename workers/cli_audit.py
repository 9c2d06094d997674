"""``dsr audit verify``: recompute the evidence trail's hash chains and name the first record that breaks one.

Prints one line per tenant (records verified and the head hash, to anchor outside the database) and, for a
broken chain, the record where it breaks. Exit status 0 when every chain verifies, 1 when one does not, 2
when no orchestrator database is configured.
"""

from __future__ import annotations

import argparse
import json

import asyncpg

from activities.audit import verify_chain
from workers.config import ConfigError, Settings

EXIT_OK = 0
EXIT_FAILED = 1


class AuditUnreachable(Exception):
    """The orchestrator's database does not answer; the message is one line."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``audit verify`` on the ``dsr`` parser's subcommands."""
    p = sub.add_parser("audit", help="the evidence trail")
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = actions.add_parser("verify", help="recompute the audit hash chains; name the first tampered record")
    p.add_argument("--tenant", default=None, help="only this tenant's chain")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=audit_verify)


async def audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Verify the chains of the configured orchestrator database (``DATABASE_URL`` or ``database_url``)."""
    url = settings.orchestrator_database_url()
    if not url:
        raise ConfigError("audit verify reads the orchestrator's database: set DATABASE_URL or database_url")
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise AuditUnreachable(f"cannot reach the orchestrator's database: {type(exc).__name__}") from None
    try:
        report = await verify_chain(conn, args.tenant)
    except asyncpg.UndefinedTableError:
        raise ConfigError("the orchestrator's database has no audit table (dsr_audit): is it the right one?") from None
    finally:
        await conn.close()
    if args.json:
        print(json.dumps({
            "ok": report.ok,
            "tenants": {t: {"records": n, "head": report.heads[t]} for t, n in report.records.items()},
            "breaks": [
                {"tenant": b.tenant, "problem": b.problem, "record_id": b.record_id, "seq": b.seq, "detail": b.detail}
                for b in report.breaks
            ],
        }, indent=2))
    else:
        broken = {b.tenant: b for b in report.breaks}
        for tenant, count in sorted(report.records.items()):
            if tenant in broken:
                print(f"FAILED  {broken[tenant].line()}")
            else:
                print(f"ok      tenant {tenant}: {count} records, head {report.heads[tenant]}")
        if not report.records:
            print("ok      the audit trail is empty")
    return EXIT_OK if report.ok else EXIT_FAILED
