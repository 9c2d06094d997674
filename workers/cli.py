"""The ``dsr`` command.

``dsr dev`` runs the whole stack on one machine; ``dsr worker`` and ``dsr api``
run one production process each against a configured Temporal and database;
``dsr demo`` runs the end-to-end demo (``make demo``); ``dsr backups reapply`` erases again, in a database
restored from a backup, the subjects the erasure ledger lists. ``dsr request|decide|extend|dispute`` call
the HTTP API (workers/cli_requests.py); ``dsr config check`` reaches every configured system
(workers/cli_check.py).

Bad input or configuration ends with one line on stderr and exit status 2;
a stack that cannot start (a port in use, a server that dies) with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from workers.codec import CodecKeyError
from workers.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from temporalio.client import Client

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """The command cannot go on; the message is one line for the operator (exit status 1)."""


async def _connect(settings: Settings) -> Client:
    """The Temporal client, or a one-line error when Temporal does not answer."""
    from workers.temporal import connect

    try:
        return await connect(settings)
    except RuntimeError as exc:  # the SDK's "Failed client connect"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(f"cannot reach Temporal at {settings.temporal.address}: {first}") from exc


def _install_stop_handlers(stop: Callable[[], None]) -> None:
    """SIGINT and SIGTERM call ``stop`` instead of interrupting the event loop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not main thread
            loop.add_signal_handler(sig, stop)


# --- subcommands ---------------------------------------------------------------------------


async def _dev(settings: Settings, _args: argparse.Namespace) -> int:
    from workers.dev import DevStack

    stack = DevStack(settings)
    _install_stop_handlers(stack.request_stop)
    async with stack:
        db = (
            f"embedded PostgreSQL in {stack.pgdata} (database dsr)"
            if stack.postgres is not None
            else "DATABASE_URL"
        )
        print(
            "DSR dev stack is running\n"
            f"  HTTP API     {stack.api_url}\n"
            f"  Temporal UI  {stack.ui_url}\n"
            f"  Temporal     {settings.temporal.address} (namespace {settings.temporal.namespace})\n"
            f"  Database     {db}\n"
            f"  State        {stack.state_dir}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        await stack.wait()
    print("DSR dev stack stopped.", flush=True)
    return EXIT_OK


async def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    from workers.worker import run_worker

    database_url = settings.orchestrator_database_url()
    if not database_url:
        raise ConfigError("the worker needs the orchestrator's database: set DATABASE_URL or database_url")
    client = await _connect(settings)
    stop = asyncio.Event()
    _install_stop_handlers(stop.set)
    await run_worker(settings, client, stop, database_url=database_url)
    return EXIT_OK


async def _api(settings: Settings, _args: argparse.Namespace) -> int:
    from api.server import run_api

    client = await _connect(settings)
    stop = asyncio.Event()
    _install_stop_handlers(stop.set)
    await run_api(settings, client, stop)
    return EXIT_OK


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return await run_demo(settings, stay=args.stay)



async def _backups_reapply(settings: Settings, args: argparse.Namespace) -> int:
    """Erase again, in a restored database, the subjects the erasure ledger lists (see workers.reapply)."""
    from datetime import UTC, datetime

    import asyncpg

    from activities.ledger import ErasureLedger
    from connectors.contract import ConnectorError
    from workers.reapply import reapply

    url: str = args.database_url
    if not url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("--database-url: not a PostgreSQL URL (postgresql://...)")
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise ConfigError(f"--since: not an ISO 8601 date or time: {args.since!r}") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    ledger_url = settings.orchestrator_database_url()
    if not ledger_url:
        raise ConfigError("reapply reads the erasure ledger: set DATABASE_URL or database_url")
    try:
        pool = await asyncpg.create_pool(ledger_url, min_size=1, max_size=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CliError(f"cannot reach the orchestrator's database: {type(exc).__name__}") from None
    try:
        ledger = ErasureLedger.for_settings(pool, settings)
        _ = ledger.keys  # no key: one line, exit 2 (CodecKeyError)
        report = await reapply(settings, url, ledger=ledger, system=args.system, since=since,
                               emit=lambda line: print(line, flush=True))
    except ConnectorError as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    finally:
        await pool.close()
    return EXIT_OK if report.ok else EXIT_FAILED

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: global options and one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="dsr", description="DSR Orchestrator: data subject requests fulfilled durably on Temporal."
    )
    parser.add_argument(
        "--config", metavar="PATH", default=None,
        help="TOML configuration file (default: $DSR_CONFIG, else built-in defaults)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("dev", help="run Temporal, PostgreSQL, the worker and the API on this machine until Ctrl-C")
    p.set_defaults(run=_dev)

    p = sub.add_parser("worker", help="run a Temporal worker against the configured Temporal and DATABASE_URL")
    p.set_defaults(run=_worker)

    p = sub.add_parser("api", help="serve the HTTP API against the configured Temporal")
    p.set_defaults(run=_api)

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded stack (make demo)")
    p.add_argument("--stay", action="store_true", help="keep the stack running after the summary until Ctrl-C")
    p.set_defaults(run=_demo)

    p = sub.add_parser("backups", help="backup-store operations")
    backups = p.add_subparsers(dest="backups_command", metavar="ACTION", required=True)
    p = backups.add_parser("reapply", help="erase again, in a database restored from a backup, everyone the "
                                           "erasure ledger lists")
    p.add_argument("--database-url", required=True, metavar="URL", help="the restored PostgreSQL database")
    p.add_argument("--system", metavar="NAME", default=None,
                   help="the postgres system it is a copy of (dataset, policy); default: the only one configured")
    p.add_argument("--since", metavar="WHEN", default=None,
                   help="replay only ledger entries recorded at or after this ISO time (default: all)")
    p.set_defaults(run=_backups_reapply)

    from workers import cli_audit, cli_check, cli_keys, cli_requests

    cli_audit.add_parser(sub)
    cli_keys.add_parser(sub)
    cli_requests.add_parsers(sub)
    cli_check.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dsr`` console script; returns the exit status."""
    from workers.cli_audit import AuditUnreachable
    from workers.cli_http import ApiError
    from workers.dev import DevStackError

    args = build_parser().parse_args(argv)
    run: Command = args.run
    try:
        settings = load_settings(args.config)
        return asyncio.run(run(settings, args))
    except (ConfigError, CodecKeyError) as exc:
        print(f"dsr: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DevStackError, CliError, AuditUnreachable) as exc:
        print(f"dsr: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ApiError as exc:  # a 4xx problem is bad input (2), a 5xx or no answer a failure (1)
        print(f"dsr: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
