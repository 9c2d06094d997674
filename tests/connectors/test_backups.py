"""The backup-store connector against moto's S3 server (real HTTP), with the erasure ledger in PostgreSQL.

Backups are seeded a second apart (LastModified has whole seconds), so that a clock moved past the older one's
expiry finds one backup expired and one not; the connector's ``clock`` stands in for the weeks that pass.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import asyncpg
import boto3
import pytest
from temporalio.testing import ActivityEnvironment

from activities.db import create_pool
from activities.export_store import LocalExportStore
from activities.ledger import ErasureLedger, identity_hmac
from activities.requests import RequestActivities
from connectors.backups import BackupsConnector
from connectors.contract import ConfigurationError, ConnectorError, Subject
from connectors.registry import build_connector
from connectors.testing import MemoryPlanStore, MemorySink
from workers.config import Settings, SystemSettings
from workflows.tasks import SystemTask

EMAIL = "Jane.Doe+news@Example.com"
KEY = bytes(range(32, 64))
RETENTION = 30


def noop(_: Any) -> None:
    """Progress is not checked here."""


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def store(s3: Any) -> SimpleNamespace:
    """A bucket of its own with two backups under ``nightly/`` a second apart, and one object outside it."""
    bucket = "backups-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="nightly/older.dump", Body=b"old dump", Tagging="team=dba&tier=cold")
    time.sleep(1.05)
    s3.put_object(Bucket=bucket, Key="nightly/newer.dump", Body=b"new dump")
    s3.put_object(Bucket=bucket, Key="elsewhere/report.csv", Body=b"not a backup")
    taken = {o["Key"]: o["LastModified"].astimezone(UTC).replace(microsecond=0)
             for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    return SimpleNamespace(bucket=bucket, older=taken["nightly/older.dump"], newer=taken["nightly/newer.dump"])


@pytest.fixture
async def ledger_pool(orchestrator_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(orchestrator_db, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
def ledger(ledger_pool: asyncpg.Pool) -> ErasureLedger:
    return ErasureLedger(ledger_pool, [KEY])


@pytest.fixture
async def connect(s3_endpoint: str, store: SimpleNamespace, ledger: ErasureLedger) -> AsyncIterator[Any]:
    """Build, attach and open connectors on the store's bucket; ``at`` sets the connector's clock."""
    opened: list[BackupsConnector] = []

    async def make(*, at: datetime | None = None, attach: bool = True, **options: Any) -> BackupsConnector:
        opts = {"bucket": store.bucket, "prefix": "nightly/", "endpoint_url": s3_endpoint,
                "retention_days": RETENTION, **options}
        conn = build_connector("backups", "s3_backups", opts)
        assert isinstance(conn, BackupsConnector)
        if attach:
            conn.attach({"erasure_ledger": ledger})
        if at is not None:
            conn.clock = lambda: at
        await conn.open()
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        await conn.close()


def subject(request_id: str = "req_backups_1") -> Subject:
    return Subject(request_id=request_id, identities={"email": EMAIL, "user_id": "cust-0042"})


def tags(s3: Any, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def keys(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


async def ledger_dump(pool: asyncpg.Pool) -> str:
    rows = await pool.fetch("SELECT to_jsonb(x)::text AS j FROM dsr_erasure_ledger x ORDER BY id")
    return "\n".join(r["j"] for r in rows)


async def test_locate_and_export_list_the_backups_and_their_expiry(connect, store):
    conn = await connect()
    assert (await conn.locate(subject())).found == {"backups": 2}
    sink = MemorySink()
    out = await conn.export(subject(), sink)
    assert out.exported == {"backups": 2}
    assert sink.fields["backups"] == ["key", "taken_at", "expires_at"]
    rows = {r["key"]: r for r in sink.rows["backups"]}
    assert set(rows) == {"nightly/older.dump", "nightly/newer.dump"}  # not the object outside the prefix
    for key, taken in (("nightly/older.dump", store.older), ("nightly/newer.dump", store.newer)):
        assert datetime.fromisoformat(rows[key]["taken_at"]) == taken
        assert datetime.fromisoformat(rows[key]["expires_at"]) == taken + timedelta(days=RETENTION)


async def test_covers_since_leaves_out_older_backups(connect, store):
    conn = await connect(covers_since=(store.newer + timedelta(days=1)).date().isoformat())
    assert (await conn.locate(subject())).found == {}
    assert (await conn.export(subject(), MemorySink())).exported == {}


async def test_erasure_records_hashes_only_tags_backups_and_says_when_they_expire(connect, store, s3, ledger,
                                                                                 ledger_pool):
    conn = await connect()
    out = await conn.erase(subject(), MemoryPlanStore(), noop)

    assert out.completes_at == store.newer + timedelta(days=RETENTION)
    assert [(r.collection, r.count) for r in out.retained] == [("backups", 2)]
    assert "beyond use" in out.retained[0].ground
    assert out.deleted == {} and out.masked == {}

    for key in ("nightly/older.dump", "nightly/newer.dump"):
        assert tags(s3, store.bucket, key)["dsr-beyond-use"] == "true"
        assert tags(s3, store.bucket, key)["dsr-erasure"] == "req_backups_1"
    assert tags(s3, store.bucket, "nightly/older.dump")["team"] == "dba"  # merged, not replaced
    assert tags(s3, store.bucket, "nightly/older.dump")["tier"] == "cold"
    assert tags(s3, store.bucket, "elsewhere/report.csv") == {}

    dump = await ledger_dump(ledger_pool)
    for form in (EMAIL, EMAIL.lower(), quote(EMAIL), quote(EMAIL.lower()), "jane.doe", "Jane.Doe", "cust-0042"):
        assert form not in dump
    rows = await ledger_pool.fetch("SELECT * FROM dsr_erasure_ledger ORDER BY identity_type")
    assert [(r["request_id"], r["system"], r["identity_type"]) for r in rows] == [
        ("req_backups_1", "backups", "email"), ("req_backups_1", "backups", "user_id")]
    assert rows[0]["identity_hmac"] == identity_hmac(KEY, "email", "jane.doe+news@example.com")
    assert rows[0]["identity_hmac"] == identity_hmac(KEY, "email", "  JANE.DOE+NEWS@EXAMPLE.COM ")


async def test_erasing_twice_is_harmless(connect, store, s3, ledger_pool):
    conn = await connect()
    plan = MemoryPlanStore()
    first = await conn.erase(subject(), plan, noop)
    before = (await ledger_dump(ledger_pool), tags(s3, store.bucket, "nightly/older.dump"))
    second = await conn.erase(subject(), plan, noop)
    assert second == first
    assert (await ledger_dump(ledger_pool), tags(s3, store.bucket, "nightly/older.dump")) == before
    assert keys(s3, store.bucket) == {"nightly/older.dump", "nightly/newer.dump", "elsewhere/report.csv"}


async def test_erasure_refuses_without_the_ledger(connect):
    conn = await connect(attach=False)
    with pytest.raises(ConnectorError, match="erasure ledger") as err:
        await conn.erase(subject(), MemoryPlanStore(), noop)
    assert not err.value.retryable


async def test_verification_deletes_what_outlived_retention_and_reports_the_rest(connect, store, s3):
    plan = MemoryPlanStore()
    await (await connect(delete_expired=True)).erase(subject(), plan, noop)

    # Before expiry both remain; verifying deletes nothing.
    early = await connect(delete_expired=True, at=store.newer + timedelta(days=1))
    assert (await early.verify_erasure(subject(), plan)).remaining == {"backups": 2}
    assert {"nightly/older.dump", "nightly/newer.dump"} <= keys(s3, store.bucket)

    # Half a second past the older one's expiry: it goes, the newer one (a second younger) remains.
    between = await connect(delete_expired=True, at=store.older + timedelta(days=RETENTION, milliseconds=500))
    assert (await between.verify_erasure(subject(), plan)).remaining == {"backups": 1}
    assert keys(s3, store.bucket) == {"nightly/newer.dump", "elsewhere/report.csv"}

    late = await connect(delete_expired=True, at=store.newer + timedelta(days=RETENTION))
    out = await late.verify_erasure(subject(), plan)
    assert out.ok and out.remaining == {}
    assert keys(s3, store.bucket) == {"elsewhere/report.csv"}
    assert (await late.verify_erasure(subject(), plan)).ok  # twice is harmless


async def test_without_delete_expired_backups_past_retention_remain(connect, store, s3):
    plan = MemoryPlanStore()
    await (await connect()).erase(subject(), plan, noop)
    late = await connect(at=store.newer + timedelta(days=RETENTION + 1))
    assert (await late.verify_erasure(subject(), plan)).remaining == {"backups": 2}
    assert {"nightly/older.dump", "nightly/newer.dump"} <= keys(s3, store.bucket)
    s3.delete_object(Bucket=store.bucket, Key="nightly/older.dump")  # a lifecycle rule ran
    s3.delete_object(Bucket=store.bucket, Key="nightly/newer.dump")
    assert (await late.verify_erasure(subject(), plan)).ok


async def test_a_backup_already_past_retention_is_deleted_at_erasure(connect, store, s3):
    conn = await connect(delete_expired=True, at=store.older + timedelta(days=RETENTION, milliseconds=500))
    out = await conn.erase(subject(), MemoryPlanStore(), noop)
    assert out.deleted == {"backups": 1}
    assert [(r.collection, r.count) for r in out.retained] == [("backups", 1)]
    assert out.completes_at == store.newer + timedelta(days=RETENTION)
    assert keys(s3, store.bucket) == {"nightly/newer.dump", "elsewhere/report.csv"}
    assert tags(s3, store.bucket, "nightly/newer.dump")["dsr-beyond-use"] == "true"


async def test_a_newer_backup_under_the_same_key_is_not_the_affected_one(connect, store, s3):
    plan = MemoryPlanStore()
    await (await connect(delete_expired=True)).erase(subject(), plan, noop)
    await asyncio.sleep(1.05)
    s3.put_object(Bucket=store.bucket, Key="nightly/newer.dump", Body=b"taken after the erasure")
    late = await connect(delete_expired=True, at=store.newer + timedelta(days=RETENTION))
    assert (await late.verify_erasure(subject(), plan)).ok
    assert "nightly/newer.dump" in keys(s3, store.bucket)  # the new dump is kept


async def test_bad_configuration_is_one_clear_line(s3_endpoint):
    with pytest.raises(ConfigurationError, match=r"systems.b: bucket: Field required"):
        build_connector("b", "s3_backups", {"retention_days": 7})
    with pytest.raises(ConfigurationError, match=r"systems.b: retention_days"):
        build_connector("b", "s3_backups", {"bucket": "x", "retention_days": 0})
    with pytest.raises(ConfigurationError, match=r"systems.b: delete_after"):
        build_connector("b", "s3_backups", {"bucket": "x", "retention_days": 7, "delete_after": 3})
    with pytest.raises(ConfigurationError, match="NOPE_UNSET_KEY_ENV"):
        build_connector("b", "s3_backups", {"bucket": "x", "retention_days": 7,
                                            "access_key_id_env": "NOPE_UNSET_KEY_ENV",
                                            "secret_access_key_env": "NOPE_UNSET_SECRET_ENV"})
    conn = build_connector("b", "s3_backups", {"bucket": "no-such-bucket-" + uuid.uuid4().hex[:8],
                                               "retention_days": 7, "endpoint_url": s3_endpoint})
    with pytest.raises(ConfigurationError, match=r"NoSuchBucket|404") as err:
        await conn.open()
    assert "\n" not in str(err.value)


async def test_the_erase_activity_attaches_the_ledger(s3_endpoint, store, s3, orchestrator_db, tmp_path):
    """Through RequestActivities: the connector gets the orchestrator's ledger before it opens."""
    system = SystemSettings(type="s3_backups", bucket=store.bucket, prefix="nightly/", endpoint_url=s3_endpoint,
                            retention_days=RETENTION)
    settings = Settings(state_dir=tmp_path / "state", systems={"backups": system})
    pool = await create_pool(orchestrator_db)
    acts = RequestActivities(settings, pool, LocalExportStore(tmp_path / "exports"))
    try:
        task = SystemTask(request_id="req_via_activity", system="backups", identities={"email": EMAIL})
        out = await ActivityEnvironment().run(acts.erase, task)
        assert out.completes_at == store.newer + timedelta(days=RETENTION)
        rows = await pool.fetch("SELECT identity_type, identity_hmac FROM dsr_erasure_ledger")
        assert [r["identity_type"] for r in rows] == ["email"]
        assert EMAIL.lower() not in await ledger_dump(pool)
        verified = await ActivityEnvironment().run(acts.verify_erasure, task)
        assert verified.remaining == {"backups": 2}  # not expired yet
    finally:
        await acts.close()
        await pool.close()
