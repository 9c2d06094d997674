"""The admin console end to end in Debian's headless Chromium, driven by Playwright.

The API is served on a real 127.0.0.1 port; the real worker runs the real activities against Fides' example
database. An administrator signs in with their API key, finds the pending erasure in the queue, approves it
with a reason, and watches it complete on its page. The browser is ``/usr/bin/chromium`` (installed with
apt-get by :func:`tests.api.chromium.ensure_chromium` when missing), never one Playwright downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from api.app import create_app
from tests.api.chromium import CHROMIUM, LAUNCH_ARGS, ensure_chromium
from tests.helpers import HASH_SECRET_ENV, api_settings, fides_settings
from workers.config import ApiToken, TemporalSettings
from workers.worker import request_worker
from workflows.models import RequestStatus, Step

PORTAL = "portal-key-" + uuid.uuid4().hex
ADMIN = "admin-key-" + uuid.uuid4().hex


def _token(name: str, secret: str, role: str) -> ApiToken:
    return ApiToken(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), role=role, tenant="acme")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium from Debian's package, through Playwright's driver."""
    reason = await asyncio.to_thread(ensure_chromium)
    if reason is not None:
        pytest.skip(reason)
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def test_an_admin_approves_a_pending_erasure_and_sees_it_complete(
    browser: Any, temporal_env: Any, fides_db: str, orchestrator_db: str, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "browser-secret")
    settings = fides_settings(
        fides_db, tmp_path,
        temporal=TemporalSettings(task_queue="admin-browser-" + uuid.uuid4().hex[:8]),
        api=api_settings([_token("portal", PORTAL, "portal"), _token("admin-acme", ADMIN, "admin")]),
    )
    app = create_app(settings, temporal_env.client)
    async with (
        request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker,
        worker,
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as http,
    ):
        # The support portal submits an erasure; it waits for the administrator's approval.
        async with http.post(server.make_url("/v1/requests"),
                             json={"kind": "erasure", "identities": {"email": "jane@example.com"}},
                             headers={"Authorization": f"Bearer {PORTAL}"}) as resp:
            assert resp.status == 201, await resp.text()
            rid = (await resp.json())["id"]
        handle = temporal_env.client.get_workflow_handle(rid, result_type=RequestStatus)

        async def awaiting() -> bool:
            return (await handle.query("status", result_type=RequestStatus)).step == Step.AWAITING_APPROVAL

        await _until(awaiting, 30, "the approval gate")

        context = await browser.new_context()
        page = await context.new_page()
        try:
            await page.goto(str(server.make_url("/admin/")))
            assert page.url.endswith("/admin/login")  # no session yet
            await page.fill("#api_key", ADMIN)
            await page.click("button:has-text('Sign in')")
            await page.wait_for_url("**/admin/")
            assert "admin-acme" in await page.inner_text("header")

            async def listed() -> bool:
                if await page.locator(f"a:text-is('{rid}')").count():
                    return True
                await page.reload()
                return False

            await _until(listed, 20, "the request in the queue")
            row = await page.inner_text(f"tr:has(a:text-is('{rid}'))")
            assert "erasure" in row and "approval" in row
            assert "jane@example.com" not in await page.content()

            await page.click(f"a:text-is('{rid}')")
            await page.wait_for_url(f"**/admin/requests/{rid}")
            assert (await page.inner_text("#step")).strip() == "awaiting approval"
            await page.fill("#approve-reason", "identity checked by support")
            await page.click("#approve-form button[type=submit]")
            await page.wait_for_url(f"**/admin/requests/{rid}?done=decision")
            assert "The decision is recorded." in await page.inner_text(".notice")
            assert "identity checked by support" in await page.inner_text("table.timeline")

            async def completed() -> bool:
                if (await page.inner_text("#step")).strip() == "completed":
                    return True
                await page.reload()
                return False

            await _until(completed, 90, "the erasure to complete")
            if os.environ.get("DSR_ADMIN_SCREENSHOT"):  # to look at the page: DSR_ADMIN_SCREENSHOT=/tmp/page.png
                await page.screenshot(path=os.environ["DSR_ADMIN_SCREENSHOT"], full_page=True)
            systems = await page.inner_text("table.systems")
            assert "appdb" in systems and "done" in systems
            assert "Tax law: order records kept 10 years" in systems  # retained, with its legal ground
            timeline = await page.inner_text("table.timeline")
            assert "Approved" in timeline and "Completed" in timeline
            assert "jane@example.com" not in await page.content()
        finally:
            await context.close()

    decision = (await handle.result()).decision
    assert decision is not None and decision.actor == "admin-acme" and decision.reason == "identity checked by support"
