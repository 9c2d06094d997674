"""``[temporal]`` TLS, mTLS and API keys: what the client is given for a cluster or Temporal Cloud."""

from __future__ import annotations

import pytest
from temporalio.service import TLSConfig

from workers.cli import main
from workers.config import ConfigError, Settings, TemporalSettings, load_settings
from workers.temporal import tls_for


def test_the_dev_server_is_plain(monkeypatch):
    monkeypatch.delenv("DSR_TEMPORAL_API_KEY", raising=False)
    assert tls_for(Settings()) == (False, None)


def test_an_api_key_implies_tls(monkeypatch):
    monkeypatch.setenv("DSR_TEMPORAL_API_KEY", "cloud-key-123")
    tls, key = tls_for(Settings(temporal=TemporalSettings(address="ns.acct.tmprl.cloud:7233")))
    assert isinstance(tls, TLSConfig) and key == "cloud-key-123"
    assert tls.client_cert is None and tls.server_root_ca_cert is None  # the system's CAs


def test_mtls_reads_the_files_relative_to_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv("DSR_TEMPORAL_API_KEY", raising=False)
    (tmp_path / "certs").mkdir()
    for name, text in (("ca.pem", "CA"), ("client.pem", "CERT"), ("client.key", "KEY")):
        (tmp_path / "certs" / name).write_text(text)
    config = tmp_path / "dsr.toml"
    config.write_text('[temporal]\naddress = "temporal.internal:7233"\ntls_ca_file = "certs/ca.pem"\n'
                      'tls_cert_file = "certs/client.pem"\ntls_key_file = "certs/client.key"\n'
                      'tls_server_name = "temporal.internal"\n')
    tls, key = tls_for(load_settings(config))
    assert isinstance(tls, TLSConfig) and key is None
    assert (tls.server_root_ca_cert, tls.client_cert, tls.client_private_key) == (b"CA", b"CERT", b"KEY")
    assert tls.domain == "temporal.internal"


def test_half_a_client_certificate_is_refused():
    with pytest.raises(ConfigError, match="go together"):
        tls_for(Settings(temporal=TemporalSettings(tls_cert_file="/x/client.pem")))


def test_an_unreadable_certificate_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "dsr.toml"
    config.write_text('[temporal]\ntls_ca_file = "missing.pem"\n')
    monkeypatch.setenv("DSR_CODEC_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    code = main(["--config", str(config), "worker"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "tls_ca_file" in err
