"""Connecting to Temporal with the project's data converter."""

from __future__ import annotations

from temporalio.client import Client

from workers.codec import AesGcmCodec, data_converter, load_keys
from workers.config import Settings


def codec_for(settings: Settings, *, create_key: bool = False) -> AesGcmCodec:
    """The payload codec with the configured keys (``create_key`` generates a dev key if none exists)."""
    return AesGcmCodec(load_keys(settings.codec.key_env, settings.codec_key_file, create=create_key))


async def connect(settings: Settings, *, create_key: bool = False) -> Client:
    """A Temporal client whose payloads are encrypted with the configured codec key."""
    return await Client.connect(
        settings.temporal.address,
        namespace=settings.temporal.namespace,
        data_converter=data_converter(codec_for(settings, create_key=create_key)),
    )
