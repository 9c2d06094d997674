"""The erasure ledger: keyed hashes only, recorded once, readable in order, keys from the env or the codec key."""

from __future__ import annotations

import base64

import asyncpg
import pytest

from activities.ledger import LEDGER_KEY_ENV, ErasureLedger, identity_hmac, key_id, ledger_keys
from tests.conftest import TEST_CODEC_KEY
from workers.codec import CodecKeyError
from workers.config import Settings


async def test_record_is_idempotent_and_holds_no_identifier(orchestrator_db):
    pool = await asyncpg.create_pool(orchestrator_db, min_size=1, max_size=2)
    try:
        ledger = ErasureLedger(pool, [b"k" * 32])
        ids = {"email": "Ann@Example.org", "user_id": "u-77", "phone": " "}
        await ledger.record("req_1", "backups", ids)
        await ledger.record("req_1", "backups", ids)  # a retried activity
        await ledger.record("req_2", "backups", {"email": "bob@example.org"}, tenant="acme")
        entries = [e async for e in ledger.entries()]
        assert [(e.request_id, e.identity_type, e.tenant) for e in entries] == [
            ("req_1", "email", None), ("req_1", "user_id", None), ("req_2", "email", "acme")]
        assert entries[0].identity_hmac == identity_hmac(b"k" * 32, "email", "ann@example.org")
        assert entries[0].key_id == key_id(b"k" * 32)
        assert [e.request_id async for e in ledger.entries(system="other")] == []
        text = str([dict(r) for r in await pool.fetch("SELECT * FROM dsr_erasure_ledger")]).lower()
        assert "ann@" not in text and "example.org" not in text and "u-77" not in text
    finally:
        await pool.close()


def test_keys_from_env_first_then_each_codec_key(monkeypatch, tmp_path):
    settings = Settings(state_dir=tmp_path)
    monkeypatch.delenv(LEDGER_KEY_ENV, raising=False)
    derived = ledger_keys(settings)
    assert len(derived) == 1 and TEST_CODEC_KEY not in derived  # derived, not the codec key itself
    monkeypatch.setenv(LEDGER_KEY_ENV, "a long ledger secret")
    keys = ledger_keys(settings)
    assert len(keys) == 2 and keys[1] == derived[0]
    ledger = ErasureLedger(None, keys)  # type: ignore[arg-type]
    assert ledger.key_for(key_id(derived[0])) == derived[0]  # entries written before the env key still match
    assert ledger.key_for("0" * 16) is None


def test_no_key_at_all_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(LEDGER_KEY_ENV, raising=False)
    monkeypatch.setenv("DSR_TEST_NO_CODEC_KEY", "")
    settings = Settings(state_dir=tmp_path, codec={"key_env": "DSR_TEST_NO_CODEC_KEY"})
    with pytest.raises(CodecKeyError):
        ledger_keys(settings)
    monkeypatch.setenv(LEDGER_KEY_ENV, base64.b64encode(b"x" * 32).decode())
    assert len(ledger_keys(settings)) == 1
