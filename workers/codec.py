"""AES-GCM payload codec and the data converter every client and worker uses.

Payloads (inputs, results, query answers, update arguments) and failure
attributes are encrypted before they reach Temporal, so its history holds no
subject data in plain text. The key id travels in the payload metadata so that
keys can be rotated: old payloads name the key that sealed them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

ENCODING = b"binary/encrypted"
NONCE_BYTES = 12


class CodecKeyError(Exception):
    """The codec key is missing or malformed."""


def key_id_of(key: bytes) -> str:
    """A short, non-secret id for a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(b"dsr-codec-key-id:" + key).hexdigest()[:16]


class AesGcmCodec(PayloadCodec):
    """Encrypts each payload with AES-256-GCM; decrypts with whichever known key sealed it."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise CodecKeyError("the codec needs at least one key")
        for k in keys:
            if len(k) != 32:
                raise CodecKeyError("codec keys must be 32 bytes (AES-256)")
        self._current = keys[0]
        self._current_id = key_id_of(keys[0]).encode()
        self._by_id: Mapping[bytes, AESGCM] = {key_id_of(k).encode(): AESGCM(k) for k in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Seal each payload with the current key."""
        aead = self._by_id[self._current_id]
        out = []
        for p in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = aead.encrypt(nonce, p.SerializeToString(), self._current_id)
            out.append(
                Payload(metadata={"encoding": ENCODING, "encryption-key-id": self._current_id}, data=nonce + sealed)
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Open each sealed payload; pass others through untouched."""
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)
                continue
            key_id = p.metadata.get("encryption-key-id", b"")
            aead = self._by_id.get(key_id)
            if aead is None:
                raise CodecKeyError(f"payload sealed with unknown key id {key_id.decode(errors='replace')}")
            plain = aead.decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], key_id)
            out.append(Payload.FromString(plain))
        return out


def data_converter(codec: PayloadCodec) -> DataConverter:
    """The pydantic data converter with ``codec`` and encoded failure attributes."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def decode_key(text: str) -> bytes:
    """Parse a base64 key, with a clear error."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise CodecKeyError("codec key is not valid base64") from exc
    if len(key) != 32:
        raise CodecKeyError("codec key must decode to 32 bytes")
    return key


def load_keys(key_env: str, key_file: Path, *, create: bool = False) -> list[bytes]:
    """The codec keys: the environment variable ``key_env`` (comma-separated, newest first) or the key file.

    With ``create`` a missing key file is generated (0600), as the demo and ``dsr dev`` do.
    """
    from_env = os.environ.get(key_env)
    if from_env:
        return [decode_key(part) for part in from_env.split(",") if part.strip()]
    if not key_file.exists():
        if not create:
            raise CodecKeyError(f"no codec key: set {key_env} or create {key_file}")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    lines = [ln for ln in key_file.read_text().splitlines() if ln.strip()]
    return [decode_key(ln) for ln in lines]
