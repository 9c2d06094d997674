"""Serve the API until told to stop."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from temporalio.client import Client

from api.app import create_app
from workers.config import Settings
from workers.temporal_process import register_search_attributes

log = structlog.get_logger()

SHUTDOWN_TIMEOUT_SECONDS = 10.0


async def run_api(settings: Settings, client: Client, stop: asyncio.Event) -> None:
    """Serve the API on ``settings.api.host:port`` until ``stop`` is set, then shut down gracefully.

    Args:
        settings: The configuration.
        client: The Temporal client (with the project's data converter).
        stop: Set it to stop serving; calls in flight get up to ``SHUTDOWN_TIMEOUT_SECONDS`` to finish.
    """
    # What GET /v1/requests lists by; best effort (a managed Temporal registers them itself).
    await register_search_attributes(client, settings.temporal.namespace)
    app = create_app(settings, client)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.api.host, settings.api.port)
        await site.start()
        log.info("api.started", host=settings.api.host, port=settings.api.port)
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("api.stopped")
