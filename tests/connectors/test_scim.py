"""The SCIM connector against a real ``scim2-server`` (its CLI, with a bearer token), and against
small aiohttp servers started by the tests for what a real server does not do on demand:
rate limits, short pages, error bodies, a provider that ignores filters.

The server runs with the default schemas plus a test extension holding a boolean
``processingRestricted``, the custom attribute restriction writes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import scim2_server
from aiohttp import web
from scim2_models import Context, Email, Group, GroupMember, Name, User

from connectors.contract import Capability, ConfigurationError, ConnectorError, Subject, UnsupportedError
from connectors.registry import build_connector
from connectors.scim import ScimConnector
from connectors.testing import MemoryPlanStore, MemorySink
from tests.conftest import tool

TOKEN = "test-scim-token"
EXTENSION = "urn:example:params:scim:schemas:extension:dsr:2.0:User"
RESTRICTED = f"{EXTENSION}:processingRestricted"
SCIM_TYPE = "application/scim+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _schema_files(folder: Path) -> tuple[Path, Path]:
    """The default schemas and resource types of scim2-server, plus the test extension on User."""
    resources = Path(scim2_server.__file__).parent / "resources"
    schemas = json.loads((resources / "default-schemas.json").read_text())
    schemas.append({
        "id": EXTENSION, "name": "DsrUser", "description": "Restriction of processing (GDPR Art. 18)",
        "attributes": [{"name": "processingRestricted", "type": "boolean", "multiValued": False,
                        "description": "Processing is restricted", "required": False, "caseExact": False,
                        "mutability": "readWrite", "returned": "default", "uniqueness": "none"}],
    })
    types = json.loads((resources / "default-resource-types.json").read_text())
    types[0]["schemaExtensions"].append({"schema": EXTENSION, "required": False})
    (folder / "schemas.json").write_text(json.dumps(schemas))
    (folder / "resource-types.json").write_text(json.dumps(types))
    return folder / "schemas.json", folder / "resource-types.json"


@pytest.fixture(scope="module")
def scim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``scim2-server`` (the package's CLI) on a free loopback port, accepting only ``TOKEN``."""
    folder = tmp_path_factory.mktemp("scim")
    schemas, types = _schema_files(folder)
    port = _free_port()
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [tool("scim2-server"), "--hostname", "127.0.0.1", "--port", str(port), "--bearer-token", TOKEN,
         "--schema", str(schemas), "--resource-type", str(types)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"scim2-server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/v2", token=TOKEN)
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


class Directory:
    """Seeds and reads the SCIM server directly (models from scim2-models)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": SCIM_TYPE}

    async def _send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers=self.headers) as session, session.request(
            method, self.url + path, data=None if body is None else json.dumps(body)
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def user(self, email: str, user_name: str | None = None, restricted: bool | None = None,
                   **extra: Any) -> str:
        """Create a user; returns its id."""
        body = User(user_name=user_name or email, emails=[Email(value=email, primary=True)],
                    name=Name(given_name="Jane", family_name="Doe"), active=True, **extra,
                    ).model_dump(scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        if restricted is not None:
            body["schemas"].append(EXTENSION)
            body[EXTENSION] = {"processingRestricted": restricted}
        status, created = await self._send("POST", "/Users", body)
        assert status == 201, created
        return created["id"]

    async def group(self, name: str, *members: str) -> str:
        """Create a group holding ``members``; returns its id."""
        body = Group(display_name=name, members=[GroupMember(value=m) for m in members]
                     ).model_dump(scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        status, created = await self._send("POST", "/Groups", body)
        assert status == 201, created
        return created["id"]

    async def get(self, endpoint: str, rid: str) -> dict[str, Any] | None:
        status, body = await self._send("GET", f"/{endpoint}/{rid}")
        return body if status == 200 else None

    async def members(self, gid: str) -> list[str]:
        group = await self.get("Groups", gid)
        assert group is not None
        return [m["value"] for m in group.get("members") or ()]


@pytest.fixture
def directory(scim_server: SimpleNamespace) -> Directory:
    return Directory(scim_server.url, scim_server.token)


def unique_email(prefix: str = "jane", domain: str = "example.com") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@{domain}"


def subject(**identities: str) -> Subject:
    return Subject(request_id="req-scim", identities=identities)


def noop(_: Any) -> None:
    """A progress reporter that ignores progress."""


MakeScim = Callable[..., Awaitable[ScimConnector]]


@pytest.fixture
async def make_scim(scim_server: SimpleNamespace) -> AsyncIterator[MakeScim]:
    """Build and open SCIM connectors on the test server (options override the defaults)."""
    opened: list[ScimConnector] = []

    async def make(**options: Any) -> ScimConnector:
        connector = ScimConnector.from_options("directory", {"base_url": scim_server.url, "token": TOKEN, **options})
        await connector.open()
        opened.append(connector)
        return connector

    yield make
    for connector in opened:
        await connector.close()


@asynccontextmanager
async def fake_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An aiohttp server on loopback answering every request with ``handler``; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
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


# ---- locate and export --------------------------------------------------------------------


async def test_finds_the_user_by_email_and_by_user_name(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email, user_name=f"u-{uuid.uuid4().hex[:8]}")
    user_name = (await directory.get("Users", uid))["userName"]
    await directory.group("staff", uid)
    await directory.group("admins", uid, await directory.user(unique_email("colleague")))
    connector = await make_scim()
    assert connector.capabilities == {Capability.LOCATE, Capability.EXPORT, Capability.ERASE, Capability.DEACTIVATE}

    assert (await connector.locate(subject(email=email))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(email=email.upper()))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(user_id=user_name))).found == {"users": 1, "groups": 2}
    # Both identities lead to one account: counted once.
    assert (await connector.locate(subject(email=email, user_id=user_name))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(email=unique_email("nobody")))).found == {}
    # An identity the options do not map is not searched.
    assert (await connector.locate(subject(phone="+49 30 1234"))).found == {}


async def test_an_extension_attribute_can_be_an_identity(make_scim: MakeScim, directory: Directory) -> None:
    employee = f"E-{uuid.uuid4().hex[:8]}"
    await directory.user(unique_email())
    uid = await directory.user(unique_email())
    status, _ = await directory._send("PATCH", f"/Users/{uid}", {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:"
                        "employeeNumber", "value": employee}]})
    assert status in (200, 204)
    connector = await make_scim(identities={
        "employee_id": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"})
    assert (await connector.locate(subject(employee_id=employee))).found == {"users": 1}


async def test_exports_the_user_resource_and_its_memberships(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email, title="Engineer")
    colleague = await directory.user(unique_email("colleague"))
    gid = await directory.group("admins", uid, colleague)
    connector = await make_scim()
    sink = MemorySink()
    outcome = await connector.export(subject(email=email), sink)
    assert outcome.exported == {"users": 1, "groups": 1} == sink.counts

    row = sink.rows["users"][0]
    # Core attributes in RFC 7643 order, as the server returned them; no schemas, no password.
    assert sink.fields["users"] == ["id", "meta", "userName", "name", "title", "active", "emails"]
    assert row["id"] == uid and row["emails"] == [{"value": email, "primary": True}]
    assert row["name"] == {"givenName": "Jane", "familyName": "Doe"} and row["title"] == "Engineer"
    assert row["meta"]["resourceType"] == "User"
    # The membership, and nothing of the group's other members.
    assert sink.rows["groups"] == [{"id": gid, "displayName": "admins", "externalId": None, "member": uid}]
    assert colleague not in json.dumps(sink.rows)

    empty = MemorySink()
    assert (await connector.export(subject(email=unique_email("nobody")), empty)).exported == {}
    assert empty.rows == {}


# ---- erasure, deactivation, restriction ---------------------------------------------------


async def test_erase_deletes_the_user_and_its_memberships(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email)
    colleague = await directory.user(unique_email("colleague"))
    staff, admins = await directory.group("staff", uid), await directory.group("admins", uid, colleague)
    connector = await make_scim()
    plan = MemoryPlanStore()
    progress: list[Any] = []

    outcome = await connector.erase(subject(email=email), plan, progress.append)
    assert outcome.deleted == {"groups": 2, "users": 1} and outcome.retained == []
    assert progress[0] == {"planned": 3} and progress[-1] == {"applied": 3}
    assert await directory.get("Users", uid) is None
    assert await directory.members(staff) == [] and await directory.members(admins) == [colleague]
    assert await directory.get("Users", colleague) is not None
    assert (await connector.verify_erasure(subject(email=email), plan)).ok

    # A re-run knows what was done from the plan: same counts, 404s taken as done.
    again = await connector.erase(subject(email=email), plan, noop)
    assert again.deleted == outcome.deleted and again.batches == 0
    plan.forget_done()
    assert (await connector.erase(subject(email=email), plan, noop)).deleted == outcome.deleted
    assert (await connector.verify_erasure(subject(email=email), plan)).ok


async def test_verification_reports_an_account_the_erasure_missed(
    make_scim: MakeScim, directory: Directory
) -> None:
    email = unique_email()
    await directory.user(email)
    connector = await make_scim()
    plan = MemoryPlanStore()
    await connector.erase(subject(email=email), plan, noop)
    await directory.user(email, user_name=f"again-{uuid.uuid4().hex[:6]}")  # created again meanwhile
    assert (await connector.verify_erasure(subject(email=email), plan)).remaining == {"users": 1}


async def test_erase_deactivates_when_the_tenant_keeps_accounts(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email)
    gid = await directory.group("staff", uid)
    connector = await make_scim(on_erase="deactivate", retention_ground="Tenant policy 4.2: accounts kept")
    plan = MemoryPlanStore()

    outcome = await connector.erase(subject(email=email), plan, noop)
    assert outcome.deleted == {} and outcome.masked == {}
    assert {(r.collection, r.count, r.ground) for r in outcome.retained} == {
        ("users", 1, "Tenant policy 4.2: accounts kept"), ("groups", 1, "Tenant policy 4.2: accounts kept")}
    user = await directory.get("Users", uid)
    assert user is not None and user["active"] is False and user["emails"][0]["value"] == email
    assert await directory.members(gid) == [uid]

    verification = await connector.verify_erasure(subject(email=email), plan)
    assert verification.ok and {(r.collection, r.count) for r in verification.retained} == {("users", 1),
                                                                                            ("groups", 1)}
    # Reactivated behind our back: verification says so.
    await directory._send("PATCH", f"/Users/{uid}", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                                      "Operations": [{"op": "replace", "path": "active",
                                                                      "value": True}]})
    assert (await connector.verify_erasure(subject(email=email), plan)).remaining == {"users": 1}


async def test_deactivate_sets_active_false_and_keeps_everything(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email)
    gid = await directory.group("staff", uid)
    connector = await make_scim()
    outcome = await connector.deactivate(subject(email=email))
    assert outcome.changed == {"users": 1} and outcome.fields == ["users.active"]
    user = await directory.get("Users", uid)
    assert user is not None and user["active"] is False
    assert await directory.members(gid) == [uid]
    assert (await connector.deactivate(subject(email=email))).changed == {"users": 1}
    assert (await connector.deactivate(subject(email=unique_email("nobody")))).changed == {}


async def test_restriction_sets_and_clears_the_extension_attribute(
    make_scim: MakeScim, directory: Directory
) -> None:
    email = unique_email()
    uid = await directory.user(email)
    connector = await make_scim(restriction_attribute=RESTRICTED)
    assert Capability.RESTRICT in connector.capabilities

    restricted = await connector.restrict(subject(email=email), "dispute-1")
    assert restricted.changed == {"users": 1} and restricted.fields == [f"users.{RESTRICTED}"]
    assert (await directory.get("Users", uid))[EXTENSION] == {"processingRestricted": True}
    lifted = await connector.lift_restriction(subject(email=email), "dispute-1")
    assert lifted.changed == {"users": 1}
    assert (await directory.get("Users", uid))[EXTENSION] == {"processingRestricted": False}
    assert (await connector.lift_restriction(subject(email=email), "dispute-1")).changed == {}


async def test_restriction_needs_the_option(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    await directory.user(email)
    connector = await make_scim()
    assert Capability.RESTRICT not in connector.capabilities
    with pytest.raises(UnsupportedError):
        await connector.restrict(subject(email=email), "dispute-1")
    with pytest.raises(UnsupportedError):
        await connector.lift_restriction(subject(email=email), "dispute-1")


@pytest.mark.parametrize(("attribute", "message"), [
    (f"{EXTENSION}:noSuchFlag", f"schema {EXTENSION} has no attribute noSuchFlag"),
    ("urn:example:params:scim:schemas:extension:other:2.0:User:flag", "the server's /Schemas does not list"),
    ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "is string, not a single boolean"),
])
async def test_the_restriction_attribute_is_checked_at_open(
    scim_server: SimpleNamespace, attribute: str, message: str
) -> None:
    connector = ScimConnector.from_options("directory", {"base_url": scim_server.url, "token": TOKEN,
                                                         "restriction_attribute": attribute})
    with pytest.raises(ConfigurationError) as info:
        await connector.open()
    text = str(info.value)
    assert text.startswith("directory: restriction_attribute: ") and message in text and "\n" not in text


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
    connector = ScimConnector.from_options("directory", {"base_url": f"http://127.0.0.1:{_free_port()}/v2",
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


# ---- configuration ------------------------------------------------------------------------


async def test_a_wrong_token_is_a_configuration_error(scim_server: SimpleNamespace) -> None:
    connector = ScimConnector.from_options("directory", {"base_url": scim_server.url, "token": "wrong"})
    with pytest.raises(ConfigurationError) as info:
        await connector.open()
    assert str(info.value) == "directory: check the token failed: the server refused the bearer token (SCIM error 401)"
    assert "wrong" not in str(info.value)


async def test_the_token_comes_from_the_environment(
    scim_server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, directory: Directory
) -> None:
    email = unique_email()
    await directory.user(email)
    monkeypatch.setenv("DIRECTORY_SCIM_TOKEN", TOKEN)
    connector = build_connector("directory", "scim", {"base_url": scim_server.url, "token_env": "DIRECTORY_SCIM_TOKEN"})
    assert isinstance(connector, ScimConnector)
    await connector.open()
    try:
        assert (await connector.locate(subject(email=email))).found == {"users": 1}
    finally:
        await connector.close()


def test_a_missing_token_environment_variable_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIRECTORY_SCIM_TOKEN", raising=False)
    with pytest.raises(ConfigurationError) as info:
        build_connector("directory", "scim", {"base_url": "https://idp.example.com/scim/v2",
                                              "token_env": "DIRECTORY_SCIM_TOKEN"})
    assert str(info.value) == "systems.directory: environment variable DIRECTORY_SCIM_TOKEN (token_env) is not set"


GOOD = {"base_url": "https://idp.example.com/scim/v2", "token": "t"}


@pytest.mark.parametrize(("options", "message"), [
    ({"token": "t"}, "base_url: Field required"),
    ({**GOOD, "base_url": "ftp://idp.example.com"}, "base_url: Value error, must be an http:// or https:// URL"),
    ({"base_url": GOOD["base_url"]}, "set exactly one of token_env (production) or token (tests)"),
    ({**GOOD, "token_env": "X"}, "set exactly one of token_env (production) or token (tests)"),
    ({**GOOD, "on_erase": "shred"}, "on_erase: Input should be 'delete' or 'deactivate'"),
    ({**GOOD, "page_size": 0}, "page_size: Input should be greater than or equal to 1"),
    ({**GOOD, "identities": {}}, "identities: Value error, map at least one identity type"),
    ({**GOOD, "identities": {"email": "emails value"}}, "email: 'emails value' is not a SCIM attribute path"),
    ({**GOOD, "restriction_attribute": "processingRestricted"}, "restriction_attribute: Value error, must be an "
                                                                "extension attribute path"),
    ({**GOOD, "page_sise": 10}, "page_sise: Extra inputs are not permitted"),
])
def test_bad_options_are_one_clear_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ScimConnector.from_options("directory", options)
    text = str(info.value)
    assert text.startswith("systems.directory: ") and message in text and "\n" not in text


def test_the_registry_finds_the_connector() -> None:
    connector = build_connector("directory", "scim", GOOD)
    assert type(connector) is ScimConnector and connector.name == "directory"


async def test_calls_before_open_fail_clearly() -> None:
    connector = ScimConnector.from_options("directory", GOOD)
    with pytest.raises(ConnectorError) as info:
        await connector.locate(subject(email="jane@example.com"))
    assert str(info.value) == "directory: call open() first" and info.value.retryable is False

