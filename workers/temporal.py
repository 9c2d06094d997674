"""Connecting to Temporal with the project's data converter."""

from __future__ import annotations

from temporalio.client import Client

from workers.codec import AesGcmCodec, data_converter, load_keys
from workers.config import Settings
from workers.embedded import running_embedded_url
from workers.keys import DataKeyStore, LocalKeyProvider

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


async def connect(settings: Settings, *, create_key: bool = False, database_url: str | None = AUTO) -> Client:
    """A Temporal client whose payloads are encrypted with the configured keys (see :func:`codec_for`)."""
    return await Client.connect(
        settings.temporal.address,
        namespace=settings.temporal.namespace,
        data_converter=data_converter(codec_for(settings, create_key=create_key, database_url=database_url)),
    )
