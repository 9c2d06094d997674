"""AES-GCM payload codec and the data converter every client and worker uses.

Payloads (inputs, results, query answers, update arguments) and failure
attributes are encrypted before they reach Temporal, so its history holds no
subject data in plain text. The key id travels in the payload metadata so that
keys can be rotated: old payloads name the key that sealed them.

With a :class:`workers.keys.DataKeyStore`, each workflow's payloads are sealed with its request's own data
key (the scope, ``workers.keys.scope_of``), which the SDK tells the codec through the serialization context;
the metadata then names the scope and the data key (``encryption-scope``, ``encryption-key-id``). Payloads
encoded without a context (rare: e.g. a memo read back by the client) and everything without a store use
the master key directly, as before.
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
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)

from workers.keys import DataKeyStore, scope_of

ENCODING = b"binary/encrypted"
NONCE_BYTES = 12
SCOPE_META = "encryption-scope"


class CodecKeyError(Exception):
    """The codec key is missing or malformed."""


def key_id_of(key: bytes) -> str:
    """A short, non-secret id for a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(b"dsr-codec-key-id:" + key).hexdigest()[:16]


class AesGcmCodec(PayloadCodec, WithSerializationContext):
    """Encrypts each payload with AES-256-GCM; decrypts with whichever known key sealed it.

    Args:
        keys: The master keys, newest first.
        store: Per-request data keys; without it every payload is sealed with the master key.
        scope: The key scope this copy seals for (set by :meth:`with_context`).
    """

    def __init__(self, keys: Sequence[bytes], store: DataKeyStore | None = None, scope: str | None = None) -> None:
        if not keys:
            raise CodecKeyError("the codec needs at least one key")
        for k in keys:
            if len(k) != 32:
                raise CodecKeyError("codec keys must be 32 bytes (AES-256)")
        self._keys = list(keys)
        self._current = keys[0]
        self._current_id = key_id_of(keys[0]).encode()
        self._by_id: Mapping[bytes, AESGCM] = {key_id_of(k).encode(): AESGCM(k) for k in keys}
        self.store = store
        self.scope = scope

    @property
    def master_keys(self) -> list[bytes]:
        """The master keys, newest first."""
        return list(self._keys)

    def with_context(self, context: SerializationContext) -> AesGcmCodec:
        """A copy that seals for the context's workflow (its request's data key), when there is a store."""
        if self.store is None:
            return self
        workflow_id = None
        if isinstance(context, WorkflowSerializationContext | ActivitySerializationContext):
            workflow_id = context.workflow_id
        scope = scope_of(workflow_id)
        if scope is None or scope == self.scope:
            return self
        copy = AesGcmCodec.__new__(AesGcmCodec)
        copy.__dict__.update(self.__dict__)
        copy.scope = scope
        return copy

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Seal each payload with the scope's data key, or the current master key without a scope.

        Raises:
            workers.keys.KeyShreddedError: The scope's data key was destroyed: nothing new is sealed for it.
        """
        if self.store is not None and self.scope is not None:
            key = await self.store.current(self.scope)
            aead, key_id = key.aead, key.key_id.encode()
            aad = f"{self.scope}:{key.key_id}".encode()
            meta = {"encoding": ENCODING, "encryption-key-id": key_id, SCOPE_META: self.scope.encode()}
        else:
            aead, key_id, aad = self._by_id[self._current_id], self._current_id, self._current_id
            meta = {"encoding": ENCODING, "encryption-key-id": key_id}
        out = []
        for p in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = aead.encrypt(nonce, p.SerializeToString(), aad)
            out.append(Payload(metadata=meta, data=nonce + sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Open each sealed payload; pass others through untouched.

        Raises:
            CodecKeyError: Sealed with a key this process does not know (or a per-request key without a store).
            workers.keys.KeyShreddedError: Sealed with a data key that was destroyed.
        """
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)
                continue
            key_id = p.metadata.get("encryption-key-id", b"")
            scope = p.metadata.get(SCOPE_META)
            if scope is not None:
                if self.store is None:
                    raise CodecKeyError("payload sealed with a per-request data key, and no key store is configured")
                key = await self.store.get(scope.decode(), key_id.decode())
                aead, aad = key.aead, scope + b":" + key_id
            else:
                aead = self._by_id.get(key_id)
                if aead is None:
                    raise CodecKeyError(f"payload sealed with unknown key id {key_id.decode(errors='replace')}")
                aad = key_id
            plain = aead.decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], aad)
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
