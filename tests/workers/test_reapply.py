"""``dsr backups reapply``: a subject erased since a dump was taken is erased again when the dump is restored.

The "dump" is a copy of Fides' example database taken (CREATE DATABASE ... TEMPLATE) before jane's erasure; the
"restore" is that copy. The live erasure records its ledger entry (hashes only), then the CLI runs as the
operator would, as a subprocess with a configuration file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from activities.ledger import ErasureLedger
from connectors.postgres import PostgresConnector
from connectors.testing import MemoryPlanStore
from tests.conftest import DEMO, REPO
from tests.connectors.conftest import dump, subject
from tests.helpers import HASH_SECRET_ENV
from workers.config import Settings, load_settings
from workers.embedded import EmbeddedPostgres, ensure_database
from workers.reapply import reapply

JANE = "jane@example.com"
CONFIG = f"""
[systems.appdb]
type = "postgres"
dsn_env = "REAPPLY_TEST_LIVE_DSN"
dataset = "{DEMO / 'postgres_example_test_dataset.yml'}"
hash_secret_env = "{HASH_SECRET_ENV}"

[systems.appdb.policy]
default_strategy = "null_rewrite"
rules = [
  {{categories = ["user.contact.email"], strategy = "hash"}},
  {{categories = ["user.name"], strategy = "string_rewrite", rewrite_value = "REDACTED"}},
  {{categories = ["user.sensor"], strategy = "delete_row"}},
]
retain = [{{collection = "orders", ground = "Tax law: order records kept 10 years"}}]

[systems.backups]
type = "s3_backups"
bucket = "db-backups"
retention_days = 35
"""


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "reapply-test-secret")
    monkeypatch.delenv("DSR_LEDGER_KEY", raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "dsr.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + CONFIG)
    return path


async def _copy(pg: EmbeddedPostgres, url: str) -> str:
    """A copy of the database at ``url`` (no one may be connected to it meanwhile)."""
    name = f"dump_{uuid.uuid4().hex[:12]}"
    await ensure_database(pg.url(), name, template=urlsplit(url).path.lstrip("/"))
    return pg.url(name)


async def _erase_live(settings: Settings, live_url: str, orchestrator_db: str, request_id: str) -> None:
    """What the request workflow does for jane: erase the live database, record the ledger entry."""
    options = {k: v for k, v in settings.systems["appdb"].options().items() if k != "dsn_env"}
    connector = PostgresConnector.from_options("appdb", {**options, "dsn": live_url})
    await connector.open()
    try:
        plan = MemoryPlanStore()
        await connector.erase(subject(JANE), plan, lambda _: None)
        assert (await connector.verify_erasure(subject(JANE), plan)).ok
    finally:
        await connector.close()
    pool = await asyncpg.create_pool(orchestrator_db, min_size=1, max_size=2)
    try:
        await ErasureLedger.for_settings(pool, settings).record(request_id, "backups", {"email": "Jane@Example.com"})
    finally:
        await pool.close()


async def _state(url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        return await dump(conn)
    finally:
        await conn.close()


def _holds(state: dict[str, list[str]], text: str) -> bool:
    return any(text in row.lower() for rows in state.values() for row in rows)


def _cli(config: Path, orchestrator_db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": orchestrator_db}
    return subprocess.run([sys.executable, "-m", "workers.cli", "--config", str(config), "backups", "reapply", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


async def test_a_restored_dump_has_the_erased_subject_erased_again(pg, fides_db, orchestrator_db, config):
    settings = load_settings(config)
    restored = await _copy(pg, fides_db)  # the nightly dump, taken before the request came
    await _erase_live(settings, fides_db, orchestrator_db, "req_reapply_1")
    live_after = await _state(fides_db)
    assert not _holds(live_after, JANE)

    before = await _state(restored)  # the dump restored: jane is back
    assert _holds(before, JANE)

    run = _cli(config, orchestrator_db, "--database-url", restored, "--system", "appdb")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("ledger entry ") and "erased again" in lines[0]
    assert "masked " in lines[0] and "customer=1" in lines[0] and "retained orders=1" in lines[0]
    assert lines[-1].startswith("1 erased subject(s) in the ledger, 1 found and erased again in appdb, 0 failure")
    assert "jane" not in (run.stdout + run.stderr).lower()

    after = await _state(restored)
    assert not _holds(after, JANE)
    assert after == live_after  # erased exactly as live was; every other customer untouched
    customer_1 = [r for r in after["customer"] if "customer-1@example.com" in r]
    assert customer_1 == [r for r in before["customer"] if "customer-1@example.com" in r]

    again = _cli(config, orchestrator_db, "--database-url", restored)  # the only postgres system; harmless
    assert again.returncode == 0, again.stderr
    assert "0 found and erased again" in again.stdout
    assert await _state(restored) == after


async def test_since_skips_entries_recorded_before_the_backup(pg, fides_db, orchestrator_db, config):
    settings = load_settings(config)
    restored = await _copy(pg, fides_db)
    await _erase_live(settings, fides_db, orchestrator_db, "req_reapply_2")
    lines: list[str] = []
    pool = await asyncpg.create_pool(orchestrator_db, min_size=1, max_size=2)
    try:
        ledger = ErasureLedger.for_settings(pool, settings)
        report = await reapply(settings, restored, ledger=ledger, since=datetime.now(UTC) + timedelta(hours=1),
                               emit=lines.append)
        assert report.ok and report.checked == 0 and _holds(await _state(restored), JANE)
        # An entry written under a key no longer configured cannot be checked: a failure, not a silent pass.
        await ErasureLedger(pool, [b"an old, lost key".ljust(32)]).record("req_lost_key", "backups", {"email": JANE})
        report = await reapply(settings, restored, ledger=ledger, emit=lines.append)
        assert not report.ok and report.reerased == 1
        assert any("no longer configured" in line for line in report.failures)
        assert not _holds(await _state(restored), JANE)
    finally:
        await pool.close()


async def test_bad_input_is_one_line_with_status_2_and_an_unreachable_database_status_1(orchestrator_db, config):
    bad_url = _cli(config, orchestrator_db, "--database-url", "mysql://x/y")
    assert bad_url.returncode == 2 and bad_url.stderr.count("\n") == 1 and "--database-url" in bad_url.stderr
    bad_system = _cli(config, orchestrator_db, "--database-url", "postgresql://127.0.0.1:1/x", "--system", "backups")
    assert bad_system.returncode == 2 and "--system backups" in bad_system.stderr
    bad_since = _cli(config, orchestrator_db, "--database-url", "postgresql://127.0.0.1:1/x", "--since", "soon")
    assert bad_since.returncode == 2 and bad_since.stderr.count("\n") == 1
    unreachable = _cli(config, orchestrator_db, "--database-url", "postgresql://u:secretpw@127.0.0.1:1/x")
    assert unreachable.returncode == 1 and unreachable.stderr.count("\n") == 1
    assert "secretpw" not in unreachable.stderr
