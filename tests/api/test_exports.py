"""The export download behind a signed, short-lived link."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from workers.config import ExportSettings, Settings
from workers.links import sign_export_link


async def _client(settings: Settings, temporal_env) -> TestClient:
    return TestClient(TestServer(create_app(settings, temporal_env.client)))


def _settings(tmp_path) -> Settings:
    settings = Settings(state_dir=tmp_path, export=ExportSettings(path=tmp_path / "exports"))
    bundle = tmp_path / "exports" / "req_abc123def456" / "bundle.zip"
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(b"PK\x03\x04 the bundle")
    return settings


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_signed_link_downloads_without_a_token(tmp_path, temporal_env):
    settings = _settings(tmp_path)
    url = sign_export_link(settings, "req_abc123def456", datetime.now(UTC) + timedelta(minutes=5))
    async with await _client(settings, temporal_env) as client:
        resp = await client.get(_path(url))
        assert resp.status == 200
        assert await resp.read() == b"PK\x03\x04 the bundle"
        assert resp.headers["Cache-Control"] == "no-store"


async def test_tampered_expired_or_unsigned_links_are_refused(tmp_path, temporal_env):
    settings = _settings(tmp_path)
    good = _path(sign_export_link(settings, "req_abc123def456", datetime.now(UTC) + timedelta(minutes=5)))
    expired = _path(sign_export_link(settings, "req_abc123def456", datetime.now(UTC) - timedelta(seconds=1)))
    other = _path(sign_export_link(settings, "req_zzz999zzz999", datetime.now(UTC) + timedelta(minutes=5)))
    async with await _client(settings, temporal_env) as client:
        tampered = good.replace("expires=", "expires=9")
        for path, status in [(tampered, 404), (expired, 410), ("/v1/exports/req_abc123def456", 404),
                             (other.replace("req_zzz999zzz999", "req_abc123def456"), 404)]:
            resp = await client.get(path)
            assert resp.status == status, path
            assert resp.content_type == "application/problem+json"
        # A valid link for a request without a bundle says nothing more than "not found".
        assert (await client.get(other)).status == 404
