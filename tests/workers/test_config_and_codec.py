"""Configuration loading and the AES-GCM payload codec."""

from __future__ import annotations

import base64
import os

import pytest
from temporalio.api.common.v1 import Payload

from workers.codec import AesGcmCodec, CodecKeyError, load_keys
from workers.config import ConfigError, load_settings


def test_example_config_loads_and_env_overrides_nested_values(monkeypatch):
    monkeypatch.setenv("DSR_TEMPORAL__ADDRESS", "temporal:7233")
    s = load_settings("workers/demo/dsr.demo.toml")
    assert s.temporal.address == "temporal:7233"
    assert s.temporal.namespace == "default"
    assert ".." not in str(s.state_dir)
    assert s.systems["appdb"].type == "postgres"
    assert os.path.isabs(s.systems["appdb"].options()["dataset"])


@pytest.mark.parametrize(
    ("text", "needle"),
    [("[temporal\naddress=1", "not valid TOML"), ("[api]\nport = 'eighty'", "api.port"), ("bogus = 1", "bogus")],
)
def test_bad_config_is_one_clear_line(tmp_path, text, needle):
    p = tmp_path / "dsr.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


async def test_codec_roundtrip_hides_plaintext_and_rotates():
    old, new = os.urandom(32), os.urandom(32)
    p = Payload(metadata={"encoding": b"json/plain"}, data=b'{"email": "jane@example.com"}')
    sealed_old = await AesGcmCodec([old]).encode([p])
    assert b"jane" not in sealed_old[0].SerializeToString()
    rotated = AesGcmCodec([new, old])  # newest first; old payloads still open
    assert (await rotated.decode(sealed_old))[0] == p
    sealed_new = await rotated.encode([p])
    assert sealed_new[0].metadata["encryption-key-id"] != sealed_old[0].metadata["encryption-key-id"]
    with pytest.raises(CodecKeyError):
        await AesGcmCodec([old]).decode(sealed_new)


async def test_codec_detects_tampering():
    codec = AesGcmCodec([os.urandom(32)])
    sealed = (await codec.encode([Payload(data=b"x")]))[0]
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        await codec.decode([sealed])


def test_key_file_is_created_private_and_env_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("K", raising=False)
    f = tmp_path / "codec.key"
    with pytest.raises(CodecKeyError):
        load_keys("K", f)
    keys = load_keys("K", f, create=True)
    assert len(keys) == 1 and len(keys[0]) == 32 and oct(f.stat().st_mode & 0o777) == "0o600"
    assert load_keys("K", f) == keys
    monkeypatch.setenv("K", base64.b64encode(b"\1" * 32).decode())
    assert load_keys("K", f) == [b"\1" * 32]
    monkeypatch.setenv("K", "not base64!")
    with pytest.raises(CodecKeyError):
        load_keys("K", f)


async def test_worker_section_sizes_the_worker(tmp_path, monkeypatch, temporal_env, orchestrator_db):
    from workers.worker import request_worker

    p = tmp_path / "dsr.toml"
    p.write_text("[worker]\nmax_cached_workflows = 7\nmax_concurrent_activities = 3\n")
    monkeypatch.setenv("DSR_WORKER__MAX_CONCURRENT_WORKFLOW_TASKS", "5")
    settings = load_settings(p)
    async with request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker:
        config = worker.config()
    assert (config["max_cached_workflows"], config["max_concurrent_activities"],
            config["max_concurrent_workflow_tasks"]) == (7, 3, 5)
    p.write_text("[worker]\nmax_concurrent_activities = 0\n")
    with pytest.raises(ConfigError, match=r"worker\.max_concurrent_activities"):
        load_settings(p)
