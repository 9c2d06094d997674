"""``dsr keys rewrap``: wrap every per-request data key with the current master key (after a rotation).

Rotate the master key by putting the new one first (``DSR_CODEC_KEY=new,old`` or a new first line in the
key file), restart the processes, run ``dsr keys rewrap``, and then drop the old key. Exit status 0 on
success, 1 when a data key cannot be unwrapped with any configured key, 2 without a database or a key.
"""

from __future__ import annotations

import argparse

from workers.config import ConfigError, Settings

EXIT_OK = 0
EXIT_FAILED = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``keys rewrap`` on the ``dsr`` parser's subcommands."""
    p = sub.add_parser("keys", help="the per-request data keys")
    actions = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = actions.add_parser("rewrap", help="wrap every data key with the current (first) master key")
    p.set_defaults(run=keys_rewrap)


async def keys_rewrap(settings: Settings, _args: argparse.Namespace) -> int:
    """Rewrap the data keys in the orchestrator database with the first configured master key."""
    from workers.codec import load_keys
    from workers.keys import DataKeyError, DataKeyStore, LocalKeyProvider

    url = settings.orchestrator_database_url()
    if not url:
        raise ConfigError("the data keys live in the orchestrator's database: set DATABASE_URL or database_url")
    store = DataKeyStore(url, LocalKeyProvider(load_keys(settings.codec.key_env, settings.codec_key_file)))
    try:
        changed = await store.rewrap()
    except DataKeyError as exc:
        print(f"dsr: {exc}")
        return EXIT_FAILED
    finally:
        await store.close()
    print(f"rewrapped {changed} data key{'s' if changed != 1 else ''} with master key {store.provider.current_key_id}")
    return EXIT_OK
