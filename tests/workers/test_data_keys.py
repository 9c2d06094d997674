"""Per-request data keys on a real PostgreSQL: scopes, master-key rotation and rewrapping, destruction."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import ActivitySerializationContext, WorkflowSerializationContext

from workers.cli import main
from workers.codec import SCOPE_META, AesGcmCodec, CodecKeyError
from workers.keys import DataKeyStore, KeyShreddedError, LocalKeyProvider, UnknownMasterKeyError, scope_of

OLD, NEW = os.urandom(32), os.urandom(32)


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


def for_workflow(codec: AesGcmCodec, workflow_id: str) -> AesGcmCodec:
    return codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id=workflow_id))


def test_the_scope_is_the_request_id():
    assert scope_of("req_abc") == "req_abc"
    assert scope_of("req_abc/partner/crm") == "req_abc"
    assert scope_of("shred/req_abc") == "shred"
    assert scope_of(None) is None and scope_of("") is None


async def test_each_request_gets_its_own_key(orchestrator_db):
    store = DataKeyStore(orchestrator_db, LocalKeyProvider([OLD]))
    codec = AesGcmCodec([OLD], store=store)
    try:
        a = (await for_workflow(codec, "req_a").encode([plain("jane@example.com")]))[0]
        child = (await for_workflow(codec, "req_a/partner/crm").encode([plain("x")]))[0]
        activity = codec.with_context(ActivitySerializationContext(
            namespace="default", activity_id="1", activity_type="t", activity_task_queue="q", workflow_id="req_b",
            workflow_type="w", is_local=False))
        b = (await activity.encode([plain("john@example.com")]))[0]
        assert a.metadata[SCOPE_META] == b"req_a" and child.metadata[SCOPE_META] == b"req_a"
        assert b.metadata[SCOPE_META] == b"req_b"
        assert a.metadata["encryption-key-id"] == child.metadata["encryption-key-id"]
        assert a.metadata["encryption-key-id"] != b.metadata["encryption-key-id"]
        assert b"jane" not in a.SerializeToString()
        # Any process with the same database and master key opens them; one without a store cannot.
        other = AesGcmCodec([OLD], store=DataKeyStore(orchestrator_db, LocalKeyProvider([OLD])))
        assert [p.data for p in await other.decode([a, b])] == [b"jane@example.com", b"john@example.com"]
        await other.store.close()
        with pytest.raises(CodecKeyError, match="no key store"):
            await AesGcmCodec([OLD]).decode([a])
        # Without a context (no workflow), the master key seals, as before.
        bare = (await codec.encode([plain("y")]))[0]
        assert SCOPE_META not in bare.metadata
        assert (await AesGcmCodec([OLD]).decode([bare]))[0].data == b"y"
        # A wrapped key is stored, never the key: the row holds no usable key material without the master.
        conn = await asyncpg.connect(orchestrator_db)
        rows = await conn.fetch("SELECT scope, wrapped FROM dsr_data_keys ORDER BY scope")
        await conn.close()
        assert [r["scope"] for r in rows] == ["req_a", "req_b"] and all(len(r["wrapped"]) == 12 + 32 + 16 for r in rows)
    finally:
        await store.close()


async def test_concurrent_first_use_agrees_on_one_key(orchestrator_db):
    stores = [DataKeyStore(orchestrator_db, LocalKeyProvider([OLD])) for _ in range(4)]
    try:
        keys = await asyncio.gather(*(s.current("req_race") for s in stores))
        assert len({k.key_id for k in keys}) == 1
    finally:
        for s in stores:
            await s.close()


async def test_master_key_rotation_keeps_running_requests_readable(orchestrator_db, monkeypatch, capsys):
    before = DataKeyStore(orchestrator_db, LocalKeyProvider([OLD]))
    sealed = (await for_workflow(AesGcmCodec([OLD], store=before), "req_running").encode([plain("data")]))[0]
    await before.close()

    # The new master key goes first; the old one stays until every data key is rewrapped.
    rotated = DataKeyStore(orchestrator_db, LocalKeyProvider([NEW, OLD]))
    codec = AesGcmCodec([NEW, OLD], store=rotated)
    assert (await codec.decode([sealed]))[0].data == b"data"
    newer = (await for_workflow(codec, "req_new").encode([plain("more")]))[0]
    await rotated.close()

    # dsr keys rewrap, as an operator runs it: then the old master key can go.
    monkeypatch.setenv("DATABASE_URL", orchestrator_db)
    monkeypatch.setenv("DSR_CODEC_KEY", ",".join(__import__("base64").b64encode(k).decode() for k in (NEW, OLD)))
    code = await asyncio.to_thread(main, ["keys", "rewrap"])
    out = capsys.readouterr().out
    assert code == 0 and "rewrapped 1 data key" in out

    only_new = DataKeyStore(orchestrator_db, LocalKeyProvider([NEW]))
    try:
        assert [p.data for p in await AesGcmCodec([NEW], store=only_new).decode([sealed, newer])] == [b"data", b"more"]
    finally:
        await only_new.close()
    # Before the rewrap, a process with only the new key could not have opened the old data key.
    conn = await asyncpg.connect(orchestrator_db)
    assert await conn.fetchval("SELECT count(DISTINCT master_key_id) FROM dsr_data_keys") == 1
    await conn.close()


async def test_a_data_key_wrapped_by_an_unknown_master_key_is_refused(orchestrator_db):
    store = DataKeyStore(orchestrator_db, LocalKeyProvider([OLD]))
    await store.current("req_x")
    await store.close()
    stranger = DataKeyStore(orchestrator_db, LocalKeyProvider([NEW]))
    try:
        with pytest.raises(UnknownMasterKeyError):
            await stranger.current("req_x")
    finally:
        await stranger.close()


async def test_a_destroyed_key_opens_nothing_and_seals_nothing(orchestrator_db):
    store = DataKeyStore(orchestrator_db, LocalKeyProvider([OLD]))
    codec = for_workflow(AesGcmCodec([OLD], store=store), "req_gone")
    try:
        sealed = await codec.encode([plain("jane@example.com")])
        assert await store.destroy("req_gone") is True
        assert await store.destroy("req_gone") is False  # idempotent
        with pytest.raises(KeyShreddedError):
            await codec.decode(sealed)
        with pytest.raises(KeyShreddedError):
            await codec.encode([plain("again")])
        # A scope destroyed before it sealed anything can never get a key either.
        await store.destroy("req_never")
        with pytest.raises(KeyShreddedError):
            await store.current("req_never")
        conn = await asyncpg.connect(orchestrator_db)
        row = await conn.fetchrow(
            "SELECT wrapped, master_key_id, destroyed_at FROM dsr_data_keys WHERE scope = 'req_gone'")
        await conn.close()
        assert row["wrapped"] is None and row["master_key_id"] is None and row["destroyed_at"] is not None
    finally:
        await store.close()
