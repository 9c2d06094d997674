"""``dsr dev``'s Temporal dev server points its Web UI at the API's codec endpoint."""

from __future__ import annotations

import asyncio
import socket
import uuid

import aiohttp

from workers.config import ApiSettings, Settings, TemporalSettings
from workers.temporal_process import TemporalDevServer, ui_codec_endpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_dev_servers_ui_decodes_through_the_api(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    grpc_port, ui_port, api_port = free_port(), free_port(), free_port()
    settings = Settings(
        state_dir=tmp_path,
        temporal=TemporalSettings(address=f"127.0.0.1:{grpc_port}", ui_port=ui_port,
                                  task_queue=f"dev-codec-{uuid.uuid4().hex[:8]}"),
        api=ApiSettings(host="0.0.0.0", port=api_port),  # the wildcard: the UI still reaches 127.0.0.1
    )
    assert ui_codec_endpoint(settings) == f"http://127.0.0.1:{api_port}/codec"
    assert settings.temporal.allowed_ui_origins() == [f"http://127.0.0.1:{ui_port}", f"http://localhost:{ui_port}"]

    server = TemporalDevServer(settings, tmp_path, grpc_port)
    await server.spawn()
    try:
        await server.wait_ready()
        ui_settings = None
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{ui_port}/api/v1/settings") as resp:
                        if resp.status == 200:
                            ui_settings = await resp.json(content_type=None)
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        assert ui_settings is not None, "the Temporal UI did not answer"
        assert ui_settings["Codec"]["Endpoint"] == f"http://127.0.0.1:{api_port}/codec"
    finally:
        await server.stop()
