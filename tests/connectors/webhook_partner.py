"""A partner reached over the signed webhook, served by the tests on loopback (aiohttp).

It checks our signature itself (its own HMAC code, not the connector's), keeps each request once per
``Idempotency-Key``, answers ``completed`` or ``accepted`` (with a ``status_url``), and signs its callbacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

SECRET = "partner-shared-secret-1f2e"


def hmac_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """``X-DSR-Timestamp`` and ``X-DSR-Signature`` of ``body``, computed independently of the connector."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-DSR-Timestamp": ts, "X-DSR-Signature": f"sha256={mac}", "Content-Type": "application/json"}


class WebhookPartner:
    """The partner's state: what it received, how it answers, the status of each request."""

    def __init__(self, secret: str = SECRET, mode: str = "accepted", offer_status_url: bool = False) -> None:
        self.secret = secret
        self.mode = mode
        self.offer_status_url = offer_status_url
        self.url = ""
        self.received: list[dict[str, Any]] = []  # every POST that verified, with its idempotency key
        self.by_key: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.refused = 0
        self.gate: asyncio.Event | None = None  # while set and not open, a submission is recorded, then held

    def _verified(self, request: web.Request, body: bytes) -> bool:
        ts = request.headers.get("X-DSR-Timestamp", "")
        expected = hmac_headers(self.secret, body, int(ts) if ts.isdigit() else 0)["X-DSR-Signature"]
        ok = ts.isdigit() and abs(time.time() - int(ts)) <= 300 and hmac.compare_digest(
            expected, request.headers.get("X-DSR-Signature", ""))
        if not ok:
            self.refused += 1
        return ok

    def app(self) -> web.Application:
        async def submit(request: web.Request) -> web.Response:
            body = await request.read()
            if not self._verified(request, body):
                return web.json_response({"error": "bad signature"}, status=401)
            key = request.headers.get("Idempotency-Key", "")
            doc = json.loads(body)
            self.received.append({"key": key, **doc})
            if key not in self.by_key:
                self.by_key[key] = doc
                self.status[doc["request_id"]] = "completed" if self.mode == "completed" else "pending"
            if self.gate is not None:
                await self.gate.wait()
            answer: dict[str, Any] = {"status": self.mode}
            if self.mode == "accepted" and self.offer_status_url:
                answer["status_url"] = f"{self.url}/dsr/status/{doc['request_id']}"
            return web.json_response(answer, status=200 if self.mode == "completed" else 202)

        async def status(request: web.Request) -> web.Response:
            if not self._verified(request, b""):
                return web.json_response({"error": "bad signature"}, status=401)
            rid = request.match_info["rid"]
            if rid not in self.status:
                return web.json_response({"error": "unknown"}, status=404)
            return web.json_response({"status": self.status[rid]})

        app = web.Application()
        app.router.add_post("/dsr", submit)
        app.router.add_get("/dsr/status/{rid}", status)
        return app

    def callback(self, request_id: str, status: str = "completed", *, timestamp: int | None = None,
                 secret: str | None = None) -> tuple[bytes, dict[str, str]]:
        """A signed callback body and its headers."""
        body = json.dumps({"request_id": request_id, "status": status}).encode()
        return body, hmac_headers(secret or self.secret, body, timestamp)


@asynccontextmanager
async def running_webhook_partner(partner: WebhookPartner) -> AsyncIterator[WebhookPartner]:
    """Serve ``partner`` on a free loopback port; ``partner.url`` is its origin."""
    runner = web.AppRunner(partner.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    partner.url = f"http://127.0.0.1:{port}"
    try:
        yield partner
    finally:
        await runner.cleanup()
