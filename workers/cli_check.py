"""``dsr config check``: the configuration file is valid, and every system it names answers.

One line per system: its name, its type, ``ok`` or ``error`` and a one-line reason. The systems are
Temporal (a ``GetSystemInfo`` call), the orchestrator's database (``SELECT 1``), the codec key, and
each ``[systems.<name>]``: its connector is built from its options (the connector's own validation)
and opened, which is each connector's cheapest call that proves the system answers and takes our
credentials (PostgreSQL connects and reads the dataset's tables, SCIM reads ``/ServiceProviderConfig``,
LDAP binds and reads its base DNs, an S3 backup store heads its bucket, an OpenDSR partner serves its
discovery document). Nothing is read or changed for any subject.

Exit status: 0 when every line is ok; 2 when a system's configuration is refused (its options, or
credentials the system rejects); 1 when a system cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from workers.cli_show import print_json, table
from workers.config import Settings

CHECK_TIMEOUT_SECONDS = 15.0
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class CheckLine:
    """The outcome of one system's check.

    Attributes:
        name: The system (``temporal``, ``database``, ``codec`` or a ``[systems.<name>]``).
        type: Its type (``temporal``, ``postgres``, ``scim``, ...).
        ok: Whether it answered as configured.
        detail: One line: what answered, or why not.
        config_error: The configuration is at fault (rather than reachability).
    """

    name: str
    type: str
    ok: bool
    detail: str
    config_error: bool = False


class _ConfigFault(Exception):
    """A check failed because of the configuration."""


MAX_DETAIL = 160


def first_line(exc: BaseException) -> str:
    """An exception's first line, at most ``MAX_DETAIL`` characters, else its type's name (never a traceback)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    if "Connection refused" in line or "ConnectionRefused" in line:
        line = line.split(":", 1)[0] + ": connection refused"
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


async def _run(name: str, type_: str, check: Callable[[], Awaitable[str]]) -> CheckLine:
    try:
        detail = await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return CheckLine(name, type_, False, f"no answer within {CHECK_TIMEOUT_SECONDS:.0f}s")
    except _ConfigFault as exc:
        return CheckLine(name, type_, False, first_line(exc), config_error=True)
    except Exception as exc:  # every failure becomes one line; the check goes on with the next system
        from connectors.contract import ConfigurationError

        return CheckLine(name, type_, False, first_line(exc), config_error=isinstance(exc, ConfigurationError))
    return CheckLine(name, type_, True, detail)


async def _temporal(settings: Settings) -> str:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetSystemInfoRequest
    from temporalio.client import Client
    from temporalio.service import RPCError

    address, namespace = settings.temporal.address, settings.temporal.namespace
    try:
        client = await Client.connect(address, namespace=namespace)
    except RuntimeError as exc:
        raise ConnectionError(f"cannot reach {address}: {first_line(exc)}") from None
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
    except RPCError as exc:
        raise _ConfigFault(f"{address} answers, but not for namespace {namespace}: {exc.message}") from None
    return f"{address}, namespace {namespace}, server {info.server_version or 'unknown'}"


async def _database(settings: Settings) -> str:
    import asyncpg

    url = settings.orchestrator_database_url()
    if not url:
        return "not configured: dsr dev uses its embedded PostgreSQL (set DATABASE_URL for worker and api)"
    try:
        conn = await asyncpg.connect(url, timeout=CHECK_TIMEOUT_SECONDS)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidCatalogNameError,
            asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise _ConfigFault(f"refused: {type(exc).__name__}") from None
    except ValueError:  # a malformed URL; its text may hold a password
        raise _ConfigFault("DATABASE_URL is not a valid PostgreSQL URL") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ConnectionError(f"cannot connect: {type(exc).__name__}") from None
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return f"PostgreSQL {version}"


async def _codec(settings: Settings) -> str:
    from workers.codec import CodecKeyError, key_id_of, load_keys

    try:
        keys = load_keys(settings.codec.key_env, settings.codec_key_file)
    except CodecKeyError as exc:
        raise _ConfigFault(str(exc)) from None
    return f"{len(keys)} key(s), current {key_id_of(keys[0])}"


def _system_check(name: str, type_name: str, options: dict[str, object]) -> Callable[[], Awaitable[str]]:
    async def check() -> str:
        from connectors.registry import build_connector

        connector = build_connector(name, type_name, options)
        await connector.open()
        try:
            caps = ", ".join(sorted(c.value for c in connector.capabilities))
        finally:
            await connector.close()
        return f"answers; can {caps}" if caps else "answers"

    return check


async def check_all(settings: Settings) -> list[CheckLine]:
    """Check Temporal, the database, the codec key and every configured system, one after the other."""
    lines = [
        await _run("temporal", "temporal", lambda: _temporal(settings)),
        await _run("database", "postgres", lambda: _database(settings)),
        await _run("codec", "aes-gcm", lambda: _codec(settings)),
    ]
    for name, system in settings.systems.items():
        lines.append(await _run(name, system.type, _system_check(name, system.type, system.options())))
    return lines


async def config_check(settings: Settings, args: argparse.Namespace) -> int:
    """Print one line per system; exit 0 when all are ok (see the module's docstring)."""
    lines = await check_all(settings)
    if args.json:
        print_json({"ok": all(line.ok for line in lines), "systems": [asdict(line) for line in lines]})
    else:
        table([(line.name, line.type, "ok" if line.ok else "error", line.detail) for line in lines],
              ["SYSTEM", "TYPE", "STATUS", "DETAIL"])
    if all(line.ok for line in lines):
        return EXIT_OK
    if any(line.config_error for line in lines):
        print("dsr: the configuration has errors (see above)", file=sys.stderr)
        return EXIT_USAGE
    print("dsr: some systems cannot be reached (see above)", file=sys.stderr)
    return EXIT_FAILED


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``config check`` on the ``dsr`` parser's subcommands."""
    p = sub.add_parser("config", help="the configuration")
    actions = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = actions.add_parser("check", help="validate the configuration and reach every configured system, one line "
                                         "per system")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=config_check)
