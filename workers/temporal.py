"""Connecting to Temporal with the project's data converter."""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.client import Client
from temporalio.service import TLSConfig

from workers.codec import AesGcmCodec, data_converter, load_keys
from workers.config import ConfigError, Settings
from workers.embedded import running_embedded_url
from workers.keys import DataKeyStore, LocalKeyProvider
from workers.metrics import temporal_runtime
from workers.tracing import client_interceptors

AUTO = "auto"


def codec_for(settings: Settings, *, create_key: bool = False, database_url: str | None = AUTO) -> AesGcmCodec:
    """The payload codec with the configured keys (``create_key`` generates a dev key if none exists).

    Args:
        settings: The codec settings and the orchestrator database.
        create_key: Generate a master key file when there is none (``dsr dev``).
        database_url: Where the per-request data keys live; ``"auto"`` takes the configured orchestrator
            database, else the embedded one of a running ``dsr dev``; None uses the master key for everything.
    """
    keys = load_keys(settings.codec.key_env, settings.codec_key_file, create=create_key)
    url = database_url
    if database_url == AUTO:
        # Configured, else the embedded database of a running `dsr dev` on this state folder.
        url = settings.orchestrator_database_url() or running_embedded_url(settings.state_dir / "pg")
    store = DataKeyStore(url, LocalKeyProvider(keys)) if url and settings.codec.data_keys else None
    return AesGcmCodec(keys, store=store)


def enable_data_keys(client: Client, settings: Settings, database_url: str) -> None:
    """Give ``client``'s codec the per-request data keys in ``database_url`` (a database known after connecting).

    Call it before the client seals anything: payloads sealed before then use the master key.
    """
    codec = client.data_converter.payload_codec
    if isinstance(codec, AesGcmCodec) and codec.store is None and settings.codec.data_keys:
        codec.store = DataKeyStore(database_url, LocalKeyProvider(codec.master_keys))


def tls_for(settings: Settings) -> tuple[TLSConfig | bool, str | None]:
    """The TLS configuration and API key for ``[temporal]``: plain for the dev server, TLS or mTLS for a
    cluster, TLS with an API key for Temporal Cloud.

    Raises:
        ConfigError: A configured certificate file cannot be read, or only one of cert and key is set.
    """
    t = settings.temporal
    api_key = os.environ.get(t.api_key_env) or None
    if (t.tls_cert_file is None) != (t.tls_key_file is None):
        raise ConfigError("temporal.tls_cert_file and temporal.tls_key_file go together (mTLS)")
    if not (t.tls or t.tls_ca_file or t.tls_cert_file or api_key):
        return False, None

    def read(path: Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"temporal.{what}: cannot read {path}: {exc.strerror}") from None

    return TLSConfig(
        server_root_ca_cert=read(t.tls_ca_file, "tls_ca_file"),
        client_cert=read(t.tls_cert_file, "tls_cert_file"),
        client_private_key=read(t.tls_key_file, "tls_key_file"),
        domain=t.tls_server_name,
    ), api_key


async def connect(settings: Settings, *, create_key: bool = False, database_url: str | None = AUTO) -> Client:
    """A Temporal client whose payloads are encrypted with the configured keys (see :func:`codec_for`)."""
    tls, api_key = tls_for(settings)
    return await Client.connect(
        settings.temporal.address,
        namespace=settings.temporal.namespace,
        data_converter=data_converter(codec_for(settings, create_key=create_key, database_url=database_url)),
        tls=tls,
        api_key=api_key,
        # Observability (README "Observability"): the SDK's Prometheus metrics and OpenTelemetry tracing, if set.
        runtime=temporal_runtime(settings),
        interceptors=client_interceptors(settings),
    )
