"""The export store (claim check): rows go to files here; only references travel through Temporal.

A connector streams rows into a :class:`BundleSink`, which writes one JSON and
one CSV file per collection while counting rows and hashing bytes. The files
are put into the store (a local folder, or S3 through boto3) under the
request's prefix; ``build_bundle`` zips every part with a manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from connectors.contract import ExportedFile
from workers.config import Settings


class ExportStore(Protocol):
    """Where export files and bundles are kept."""

    async def put(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key``."""

    async def get(self, key: str, target: Path) -> None:
        """Copy the object ``key`` into the file ``target``."""

    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``."""

    async def delete(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""

    def location(self, key: str) -> str:
        """A path or URL an operator can use to find ``key``."""


class LocalExportStore:
    """A folder on disk (the default for one machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path_of(self, key: str) -> Path:
        """The file of ``key`` (ValueError when the key escapes the store)."""
        return self._path(key)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("export key escapes the store")
        return path

    async def put(self, key: str, source: Path) -> None:
        """Copy ``source`` into the store, atomically (write aside, then rename)."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = dest.with_name(dest.name + ".part")
        await asyncio.to_thread(shutil.copyfile, source, tmp)
        os.chmod(tmp, 0o600)
        tmp.replace(dest)

    async def get(self, key: str, target: Path) -> None:
        """Copy the stored file to ``target``."""
        await asyncio.to_thread(shutil.copyfile, self._path(key), target)

    async def list(self, prefix: str) -> list[str]:
        """Keys of the files under ``prefix``, sorted."""
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    async def delete(self, prefix: str) -> int:
        """Delete the files under ``prefix`` and the folders they leave empty."""
        keys = await self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        base = self._path(prefix)
        if base.is_dir():
            for folder in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()
        return len(keys)

    def location(self, key: str) -> str:
        """The file's absolute path."""
        return str(self._path(key))


class S3ExportStore:
    """An S3 bucket (or MinIO), through boto3; transfers are streamed (multipart for large files)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str = "us-east-1"):
        import boto3

        self.bucket = bucket
        self.prefix = prefix
        self._s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    async def put(self, key: str, source: Path) -> None:
        """Upload ``source`` (server-side encrypted)."""
        await asyncio.to_thread(
            self._s3.upload_file, str(source), self.bucket, self.prefix + key,
            ExtraArgs={"ServerSideEncryption": "AES256"},
        )

    async def get(self, key: str, target: Path) -> None:
        """Download to ``target``."""
        await asyncio.to_thread(self._s3.download_file, self.bucket, self.prefix + key, str(target))

    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (without the store's own prefix)."""

        def _list() -> list[str]:
            keys: list[str] = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            ):
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
            return sorted(keys)

        return await asyncio.to_thread(_list)

    async def delete(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (in batches of 1,000, the S3 limit)."""
        keys = await self.list(prefix)

        def _delete() -> None:
            for start in range(0, len(keys), 1000):
                batch = [{"Key": self.prefix + k} for k in keys[start:start + 1000]]
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

        await asyncio.to_thread(_delete)
        return len(keys)

    def presigned_url(self, key: str, seconds: int) -> str:
        """A GET URL for ``key`` valid for ``seconds``."""
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.prefix + key}, ExpiresIn=seconds
        )

    def location(self, key: str) -> str:
        """The object's s3:// URL."""
        return f"s3://{self.bucket}/{self.prefix}{key}"


def export_store_from(settings: Settings) -> ExportStore:
    """The configured export store."""
    cfg = settings.export
    if cfg.store == "s3":
        if not cfg.bucket:
            raise ValueError("export.bucket is required when export.store = 's3'")
        return S3ExportStore(cfg.bucket, cfg.prefix, endpoint_url=cfg.endpoint_url, region=cfg.region)
    return LocalExportStore(settings.export_path)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _csv_cell(value: Any) -> Any:
    """A CSV cell: nested values (a SCIM user's ``emails``, say) as JSON text, never a Python repr."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


class _HashingWriter:
    """A text file that counts and hashes the bytes written to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._sha = hashlib.sha256()
        self.bytes = 0

    def write(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_bytes(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self.bytes += len(data)
        self._fh.write(data)

    def close(self) -> str:
        self._fh.close()
        return self._sha.hexdigest()


class _CollectionWriter:
    """Writes one collection as a JSON array and as CSV, row by row."""

    def __init__(self, folder: Path, name: str, fields: Sequence[str]) -> None:
        self.name = name
        self.fields = list(fields)
        self.rows = 0
        self._json = _HashingWriter(folder / f"{name}.json")
        self._csv = _HashingWriter(folder / f"{name}.csv")
        self._buf = io.StringIO()
        self._csvw = csv.DictWriter(self._buf, fieldnames=self.fields, extrasaction="ignore")
        self._csvw.writeheader()
        self._flush_csv()
        self._json.write("[")
        self._json_started = False  # whether a row's JSON was written (the next one follows a comma)

    def _flush_csv(self) -> None:
        # One record, ending in the excel dialect's "\r\n", which also makes csv quote a lone "\r" in a
        # value (with lineterminator="\n" it would not): written with "\n", as PostgreSQL's COPY writes it.
        self._csv.write(self._buf.getvalue()[:-2] + "\n")
        self._buf.seek(0)
        self._buf.truncate()

    async def write(self, row: Mapping[str, Any]) -> None:
        clean = {f: _jsonable(row.get(f)) for f in self.fields}
        self._json.write(("," if self._json_started else "") + "\n" + json.dumps(clean, ensure_ascii=False))
        self._json_started = True
        self._csvw.writerow({k: _csv_cell(v) for k, v in clean.items()})
        self._flush_csv()
        self.rows += 1

    async def write_json_bytes(self, data: bytes | memoryview) -> None:
        """Append part of the rows' JSON objects, already as :meth:`write` writes them, joined by ``",\\n"``.

        For connectors whose database serialises (``connectors.postgres_copy.SerialisedWriter``):
        the CSV comes through :meth:`write_csv_bytes`, the row count through :meth:`count_rows`.
        """
        if not self._json_started:
            self._json.write_bytes(b"\n")
            self._json_started = True
        self._json.write_bytes(data)

    async def write_csv_bytes(self, data: bytes | memoryview) -> None:
        """Append part of the CSV records, already as :meth:`write` writes them."""
        self._csv.write_bytes(data)

    def count_rows(self, rows: int) -> None:
        """Count rows written through :meth:`write_json_bytes` and :meth:`write_csv_bytes`."""
        self.rows += rows

    def close(self) -> list[ExportedFile]:
        self._json.write("\n]\n")
        files = []
        for writer in (self._json, self._csv):
            digest = writer.close()
            files.append(ExportedFile(name=writer.path.name, rows=self.rows, bytes=writer.bytes, sha256=digest))
        return files


class BundleSink:
    """An ``ExportSink`` writing into a local folder; the activity then puts the files into the store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[ExportedFile] = []
        self.exported: dict[str, int] = {}

    @asynccontextmanager
    async def collection(self, name: str, fields: Sequence[str]) -> AsyncIterator[_CollectionWriter]:
        """Open a writer for one collection."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"unsafe collection name {name!r}")
        writer = _CollectionWriter(self.folder, name, fields)
        try:
            yield writer
        finally:
            self.files.extend(writer.close())
            self.exported[name] = writer.rows


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


async def build_bundle(store: ExportStore, request_id: str, parts: Sequence[str]) -> tuple[str, str, int, int]:
    """Zip every part's files with a manifest (row counts and SHA-256 per file) into ``<id>/bundle.zip``.

    Returns (key, sha256, bytes, number of data files). Files are copied one at a time: memory stays flat.
    """
    key = f"{request_id}/bundle.zip"
    with tempfile.TemporaryDirectory(prefix="dsr-bundle-") as tmp:
        tmpdir = Path(tmp)
        zip_path = tmpdir / "bundle.zip"
        manifest: dict[str, Any] = {
            "request_id": request_id,
            "created_at": datetime.now(UTC).isoformat(),
            "format": "one JSON and one CSV file per collection, per system",
            "files": [],
        }
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for part in parts:
                system = part.rstrip("/").rsplit("/", 1)[-1]
                for obj in await store.list(part.rstrip("/") + "/"):
                    local = tmpdir / "part"
                    await store.get(obj, local)
                    name = obj.rsplit("/", 1)[-1]
                    arcname = f"{system}/{name}"
                    await asyncio.to_thread(zf.write, local, arcname)
                    manifest["files"].append({
                        "path": arcname,
                        "system": system,
                        "collection": name.rsplit(".", 1)[0],
                        "format": name.rsplit(".", 1)[-1],
                        "rows": _count_rows(local, name),
                        "bytes": local.stat().st_size,
                        "sha256": _sha256_file(local),
                    })
                    local.unlink()
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))
        await store.put(key, zip_path)
        return key, _sha256_file(zip_path), zip_path.stat().st_size, len(manifest["files"])


def _count_rows(path: Path, name: str) -> int:
    """Rows in an exported file: CSV records after the header (streamed, so memory stays flat)."""
    if name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            return max(sum(1 for _ in csv.reader(fh)) - 1, 0)
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.startswith("{"))
