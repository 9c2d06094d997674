"""How the SCIM connector talks HTTP: pagination, rate limits, error bodies and a provider that
ignores filters, against small aiohttp servers started by the tests for what a real server
does not do on demand (some in front of the real ``scim2-server`` of ``scim_server``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connectors.contract import ConnectorError
from connectors.scim import ScimConnector
from connectors.testing import MemoryPlanStore
from tests.connectors.scim_server import (
    SCIM_TYPE,
    TOKEN,
    Directory,
    MakeScim,
    directory,
    free_port,
    make_scim,
    noop,
    scim_server,
    subject,
    unique_email,
)

__all__ = ["directory", "make_scim", "scim_server"]  # fixtures of scim_server, used here


@asynccontextmanager
async def fake_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An aiohttp server on loopback answering every request with ``handler``; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/v2"
    finally:
        await runner.cleanup()


def scim_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type=SCIM_TYPE, headers=headers)


def opening(request: web.Request) -> web.Response | None:
    """The answers ``open`` needs from a fake server: no service provider config, an empty token check."""
    if request.path.endswith("/ServiceProviderConfig"):
        return scim_json({}, 404)
    if request.query.get("filter") == 'userName eq "dsr-connection-check"':
        return scim_json(list_response([], total=0, start=1))
    return None


def list_response(resources: list[dict[str, Any]], total: int, start: int) -> dict[str, Any]:
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": total,
            "startIndex": start, "itemsPerPage": len(resources), "Resources": resources}


# ---- pagination ---------------------------------------------------------------------------


async def test_the_pager_follows_pages_of_page_size(make_scim: MakeScim, directory: Directory) -> None:
    domain = f"paged-{uuid.uuid4().hex[:8]}.example"
    ids = {await directory.user(unique_email(f"p{i}", domain)) for i in range(5)}
    connector = await make_scim(page_size=2)
    pages = [page async for page in connector.pages("Users", f'emails.value co "@{domain}"', ["id"])]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert {r["id"] for p in pages for r in p} == ids


async def test_the_pager_follows_short_pages_to_total_results() -> None:
    """A server that returns fewer resources than asked (as many providers cap pages)."""
    users = [{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": f"u{i}", "userName": f"u{i}"}
             for i in range(3)]
    seen: list[tuple[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        if answer := opening(request):
            return answer
        seen.append((request.query["startIndex"], request.query["count"]))
        start = int(request.query["startIndex"])
        return scim_json(list_response(users[start - 1:start], total=3, start=start))

    async with fake_server(handler) as url:
        connector = ScimConnector.from_options("directory", {"base_url": url, "token": TOKEN, "page_size": 50})
        await connector.open()
        try:
            resources = [r async for r in connector.search("Users", 'userName sw "u"')]
        finally:
            await connector.close()
    assert [r["id"] for r in resources] == ["u0", "u1", "u2"]
    assert seen == [("1", "50"), ("2", "50"), ("3", "50")]


# ---- rate limits and errors ---------------------------------------------------------------


def proxy_to(target: str, answers: list[web.Response | None], seen: list[str]):
    """A handler answering with ``answers`` in turn (None: forward to ``target``), then always forwarding."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        answer = answers.pop(0) if answers else None
        if answer is not None:
            return answer
        url = target + request.path.removeprefix("/v2")
        async with aiohttp.ClientSession() as session, session.request(
            request.method, url, params=request.query, data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")},
        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                headers={"Content-Type": resp.headers.get("Content-Type", SCIM_TYPE)})

    return handler


def too_many(retry_after: str) -> web.Response:
    return scim_json({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "429",
                      "detail": "Too many requests"}, 429, {"Retry-After": retry_after})


async def test_a_429_is_waited_out_for_retry_after(scim_server: SimpleNamespace, directory: Directory) -> None:
    email = unique_email()
    await directory.user(email)
    seen: list[str] = []
    answers: list[web.Response | None] = [None, None, too_many("1")]  # open passes, the first search is refused
    async with fake_server(proxy_to(scim_server.url, answers, seen)) as url:
        connector = ScimConnector.from_options("directory", {"base_url": url, "token": TOKEN})
        await connector.open()
        try:
            started = time.monotonic()
            assert (await connector.locate(subject(email=email))).found == {"users": 1}
            assert time.monotonic() - started >= 1.0
        finally:
            await connector.close()
    assert seen[:4] == ["GET /v2/ServiceProviderConfig", "GET /v2/Users", "GET /v2/Users", "GET /v2/Users"]


async def test_rate_limit_retries_are_bounded(scim_server: SimpleNamespace) -> None:
    seen: list[str] = []
    answers: list[web.Response | None] = [None, None] + [too_many("0") for _ in range(10)]
    async with fake_server(proxy_to(scim_server.url, answers, seen)) as url:
        connector = ScimConnector.from_options("directory", {"base_url": url, "token": TOKEN, "max_retries": 2})
        await connector.open()
        try:
            with pytest.raises(ConnectorError) as info:
                await connector.locate(subject(email="jane@example.com"))
        finally:
            await connector.close()
    assert info.value.retryable is True
    assert str(info.value) == "directory: search /Users failed: still rate limited (429) after 3 tries"
    assert len(seen) == 2 + 3


async def test_a_retry_after_beyond_the_limit_is_left_to_the_orchestrator(scim_server: SimpleNamespace) -> None:
    seen: list[str] = []
    async with fake_server(proxy_to(scim_server.url, [None, None, too_many("3600")], seen)) as url:
        connector = ScimConnector.from_options("directory", {"base_url": url, "token": TOKEN})
        await connector.open()
        try:
            started = time.monotonic()
            with pytest.raises(ConnectorError) as info:
                await connector.locate(subject(email="jane@example.com"))
            assert time.monotonic() - started < 5
        finally:
            await connector.close()
    assert info.value.retryable is True and "Retry-After 3600 s exceeds max_retry_wait" in str(info.value)


@pytest.mark.parametrize(("status", "scim_type", "retryable", "expected"), [
    (400, "invalidFilter", False, "directory: search /Users failed: SCIM error 400 (invalidFilter)"),
    (403, None, False, "directory: search /Users failed: SCIM error 403"),
    (500, None, True, "directory: search /Users failed: SCIM error 500"),
    (503, None, True, "directory: search /Users failed: SCIM error 503"),
])
async def test_scim_error_bodies_become_clear_errors_without_values(
    status: int, scim_type: str | None, retryable: bool, expected: str
) -> None:
    email = "jane.secret@example.com"

    async def handler(request: web.Request) -> web.Response:
        if answer := opening(request):
            return answer
        body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": str(status),
                "detail": f"cannot search for {request.query['filter']}"}
        if scim_type:
            body["scimType"] = scim_type
        return scim_json(body, status)

    async with fake_server(handler) as url:
        connector = ScimConnector.from_options("directory", {"base_url": url, "token": TOKEN})
        await connector.open()
        try:
            with pytest.raises(ConnectorError) as info:
                await connector.locate(subject(email=email))
        finally:
            await connector.close()
    assert str(info.value) == expected
    assert info.value.retryable is retryable
    assert info.value.status == status and info.value.scim_type == scim_type


async def test_a_real_scim_error_from_the_server(make_scim: MakeScim) -> None:
    """scim2-server refuses a filter on an attribute it does not know: 400 invalidFilter."""
    connector = await make_scim(identities={"email": "noSuchAttribute"})
    with pytest.raises(ConnectorError) as info:
        await connector.locate(subject(email="jane.secret@example.com"))
    assert str(info.value) == "directory: search /Users failed: SCIM error 400 (invalidFilter)"
    assert info.value.retryable is False


async def test_an_unreachable_server_is_retryable_and_names_no_value() -> None:
    connector = ScimConnector.from_options("directory", {"base_url": f"http://127.0.0.1:{free_port()}/v2",
                                                         "token": TOKEN})
    with pytest.raises(ConnectorError) as info:
        await connector.open()
    assert info.value.retryable is True
    assert str(info.value) == "directory: read the service provider config failed: ClientConnectorError"


async def test_a_server_that_ignores_the_filter_is_never_acted_on() -> None:
    """An account that does not match the identity is refused, so erase deletes nothing."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        if answer := opening(request):
            return answer
        seen.append(request.method)
        if request.path.endswith("/Users"):
            other = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "u1", "userName": "bob",
                     "emails": [{"value": "bob@example.com"}]}
            return scim_json(list_response([other], total=1, start=1))
        return scim_json({}, 404)

    async with fake_server(handler) as url:
        connector = ScimConnector.from_options("directory", {"base_url": url, "token": TOKEN})
        await connector.open()
        try:
            with pytest.raises(ConnectorError) as info:
                await connector.erase(subject(email="jane@example.com"), MemoryPlanStore(), noop)
        finally:
            await connector.close()
    assert "does not match the filter" in str(info.value) and "jane" not in str(info.value)
    assert info.value.retryable is False
    assert set(seen) == {"GET"}
