"""The export store and bundle: local folder and S3 (moto's server over real HTTP)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import boto3
import pytest

from activities.export_store import BundleSink, LocalExportStore, S3ExportStore, build_bundle


async def _write_part(folder: Path) -> BundleSink:
    sink = BundleSink(folder)
    async with sink.collection("customer", ["id", "email", "created", "note"]) as w:
        await w.write({"id": 1, "email": "a@example.com", "created": datetime(2020, 1, 1), "note": 'comma, "quote"'})
        await w.write({"id": 2, "email": None, "created": None, "note": Decimal("1.50"), "undeclared": "dropped"})
    async with sink.collection("empty", ["id"]):
        pass
    async with sink.collection("users", ["id", "name", "emails"]) as w:
        await w.write({"id": "u1", "name": {"givenName": "Jane"}, "emails": [{"value": "j@example.com"}]})
    return sink


async def test_sink_writes_json_and_csv_with_counts_and_hashes(tmp_path):
    sink = await _write_part(tmp_path)
    assert sink.exported == {"customer": 2, "empty": 0, "users": 1}
    nested = next(csv.DictReader(io.StringIO((tmp_path / "users.csv").read_text())))
    assert json.loads(nested["name"]) == {"givenName": "Jane"}  # JSON text in the cell, not a Python repr
    assert json.loads(nested["emails"]) == [{"value": "j@example.com"}]
    rows = json.loads((tmp_path / "customer.json").read_text())
    assert rows == [
        {"id": 1, "email": "a@example.com", "created": "2020-01-01T00:00:00", "note": 'comma, "quote"'},
        {"id": 2, "email": None, "created": None, "note": "1.50"},
    ]
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    records = list(csv.DictReader(io.StringIO((tmp_path / "customer.csv").read_text())))
    assert records[0]["note"] == 'comma, "quote"' and records[1]["email"] == ""
    for f in sink.files:
        assert hashlib.sha256((tmp_path / f.name).read_bytes()).hexdigest() == f.sha256
        assert f.bytes == (tmp_path / f.name).stat().st_size


async def test_local_bundle_has_manifest_with_checksums(tmp_path):
    store = LocalExportStore(tmp_path / "store")
    (tmp_path / "work").mkdir()
    sink = await _write_part(tmp_path / "work")
    for f in sink.files:
        await store.put(f"req_1/parts/appdb/{f.name}", tmp_path / "work" / f.name)
    key, sha, size, files = await build_bundle(store, "req_1", ["req_1/parts/appdb"])
    path = Path(store.location(key))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha and path.stat().st_size == size
    assert files == 6
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        by_path = {f["path"]: f for f in manifest["files"]}
        assert by_path["appdb/customer.json"]["rows"] == 2
        assert by_path["appdb/customer.csv"]["rows"] == 2
        assert by_path["appdb/empty.csv"]["rows"] == 0
        for name, meta in by_path.items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == meta["sha256"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_local_store_refuses_keys_that_escape(tmp_path):
    store = LocalExportStore(tmp_path / "store")
    with pytest.raises(ValueError):
        await store.put("../outside", tmp_path / "x")


async def test_s3_bundle_roundtrip(tmp_path, s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="exports")
    store = S3ExportStore("exports", "dsr/", endpoint_url=s3_endpoint)
    (tmp_path / "work").mkdir()
    sink = await _write_part(tmp_path / "work")
    for f in sink.files:
        await store.put(f"req_2/parts/appdb/{f.name}", tmp_path / "work" / f.name)
    key, sha, _size, files = await build_bundle(store, "req_2", ["req_2/parts/appdb"])
    assert store.location(key) == "s3://exports/dsr/req_2/bundle.zip"
    obj = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket="exports", Key="dsr/req_2/bundle.zip")
    body = obj["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
    assert obj["ServerSideEncryption"] == "AES256"
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert json.loads(zf.read("appdb/customer.json"))[0]["id"] == 1
    assert files == 6
