"""``GET /v1/requests``: filters and pagination through Temporal visibility, on the real dev server.

Two tenants of this module's own (unique names, so that requests of other tests never show up):
``tenant_a`` needs approval for every kind (its requests wait at ``awaiting_approval``), ``tenant_b``
for none (with the stub activities no system is configured, so its requests end ``failed``).
Visibility is eventually consistent: every expectation is polled for, with a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from google.protobuf.duration_pb2 import Duration
from structlog.testing import capture_logs
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

from tests.api.support import api_client, assert_problem, auth, create, raw_token
from workers.config import ApiToken, Settings, TenantSettings
from workers.temporal_process import register_search_attributes
from workflows.models import RequestKind
from workflows.search import DSR_TENANT

VISIBILITY_TIMEOUT = 20.0


def _token(name: str, role: str, tenant: str | None) -> ApiToken:
    return ApiToken(name=name, sha256=hashlib.sha256(raw_token(name).encode()).hexdigest(), role=role, tenant=tenant)


@pytest.fixture(scope="module")
def tenants() -> SimpleNamespace:
    suffix = uuid.uuid4().hex[:8]
    return SimpleNamespace(a=f"lista{suffix}", b=f"listb{suffix}")


@pytest.fixture
async def api(live_settings: Settings, temporal_env, tenants) -> AsyncIterator[TestClient]:
    settings = live_settings.model_copy(update={
        "tenants": {**live_settings.tenants,
                    tenants.a: TenantSettings(approval_required=list(RequestKind)),
                    tenants.b: TenantSettings(approval_required=[])},
        "api": live_settings.api.model_copy(update={"tokens": [
            *live_settings.api.tokens,
            _token(f"portal-{tenants.a}", "portal", tenants.a),
            _token(f"portal-{tenants.b}", "portal", tenants.b),
            _token(f"admin-{tenants.a}", "admin", tenants.a),
        ]}),
    })
    async with api_client(settings, temporal_env.client) as tc:
        yield tc


async def _page(tc: TestClient, token: str, **params: Any) -> dict[str, Any]:
    resp = await tc.get("/v1/requests", params={k: str(v) for k, v in params.items()}, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = VISIBILITY_TIMEOUT) -> Any:
    """Run ``check`` until it stops raising AssertionError (visibility catches up), then return its result."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def ids(page: dict[str, Any]) -> set[str]:
    return {r["id"] for r in page["requests"]}


async def test_filters_and_pagination(api, tenants):
    a_access = [await create(api, f"portal-{tenants.a}", "access") for _ in range(3)]
    a_erasure = [await create(api, f"portal-{tenants.a}", "erasure") for _ in range(2)]
    b_access = [await create(api, f"portal-{tenants.b}", "access") for _ in range(2)]
    a_all = set(a_access) | set(a_erasure)

    async def all_of_a_waiting() -> dict[str, Any]:
        page = await _page(api, "officer", tenant=tenants.a, status="awaiting_approval")
        assert ids(page) == a_all
        return page

    page = await eventually(all_of_a_waiting)
    for entry in page["requests"]:
        assert set(entry) == {"id", "tenant", "kind", "step", "due_at", "received_at"}
        assert entry["tenant"] == tenants.a and entry["step"] == "awaiting_approval"
        assert entry["kind"] == ("access" if entry["id"] in a_access else "erasure")
        due, received = datetime.fromisoformat(entry["due_at"]), datetime.fromisoformat(entry["received_at"])
        assert timedelta(days=27) < due - received < timedelta(days=32)

    async def b_failed() -> None:
        assert ids(await _page(api, "auditor", tenant=tenants.b, status="failed")) == set(b_access)

    await eventually(b_failed)  # DsrStep was upserted by the workflow as it moved on
    assert ids(await _page(api, "auditor", tenant=tenants.b, status="awaiting_approval")) == set()
    assert ids(await _page(api, "officer", tenant=tenants.a, kind="erasure")) == set(a_erasure)
    assert ids(await _page(api, "officer", tenant=tenants.a, kind="access", status="awaiting_approval")) == set(
        a_access)

    # Due dates: about a month from now.
    now = datetime.now(UTC)
    assert ids(await _page(api, "officer", tenant=tenants.a, due_before=(now + timedelta(days=1)).isoformat())) == set()
    assert ids(await _page(api, "officer", tenant=tenants.a, due_after=(now + timedelta(days=1)).isoformat())) == a_all
    assert ids(await _page(api, "officer", tenant=tenants.a, due_before=(now + timedelta(days=40)).date(),
                           due_after=now.date())) == a_all

    # A portal or admin token lists its own tenant, whatever it asks.
    assert ids(await _page(api, f"portal-{tenants.a}")) == a_all
    assert ids(await _page(api, f"admin-{tenants.a}", tenant=tenants.a)) == a_all
    resp = await api.get("/v1/requests", params={"tenant": tenants.b}, headers=auth(f"portal-{tenants.a}"))
    await assert_problem(resp, 403)

    # Pages of two: 2 + 2 + 1, every id once.
    seen: list[str] = []
    sizes: list[int] = []
    token: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"tenant": tenants.a, "page_size": 2}
        if token:
            params["page_token"] = token
        page = await _page(api, "officer", **params)
        seen += [r["id"] for r in page["requests"]]
        sizes.append(len(page["requests"]))
        token = page["next_page_token"]
        if token is None:
            break
    assert sorted(seen) == sorted(a_all)
    assert sizes[:3] == [2, 2, 1]

    # A page token belongs to its filters and cannot be altered.
    first = await _page(api, "officer", tenant=tenants.a, page_size=2)
    token = first["next_page_token"]
    assert token
    resp = await api.get("/v1/requests", params={"tenant": tenants.b, "page_size": "2", "page_token": token},
                         headers=auth("officer"))
    await assert_problem(resp, 400)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    resp = await api.get("/v1/requests", params={"tenant": tenants.a, "page_size": "2", "page_token": flipped},
                         headers=auth("officer"))
    await assert_problem(resp, 400)


async def test_a_decision_moves_the_request_to_another_step_in_visibility(api, tenants):
    request_id = await create(api, f"portal-{tenants.a}", "access")

    async def waiting() -> None:
        assert request_id in ids(await _page(api, "officer", tenant=tenants.a, status="awaiting_approval"))

    await eventually(waiting)
    # A privacy officer extends the deadline by two months: DsrDueAt follows.
    resp = await api.post(f"/v1/requests/{request_id}/extension", json={"months": 2, "reason": "ten years of data"},
                          headers=auth("officer"))
    assert resp.status == 200, await resp.text()
    new_due = datetime.fromisoformat((await resp.json())["new_due_at"])

    async def extended() -> None:
        later = (datetime.now(UTC) + timedelta(days=60)).isoformat()
        page = await _page(api, "officer", tenant=tenants.a, due_after=later)
        assert [datetime.fromisoformat(r["due_at"]) for r in page["requests"] if r["id"] == request_id] == [new_due]

    await eventually(extended)
    resp = await api.post(f"/v1/requests/{request_id}/decision", json={"outcome": "approve"},
                          headers=auth(f"admin-{tenants.a}"))
    assert resp.status == 200, await resp.text()

    async def failed() -> None:  # no system is configured with the stubs
        assert request_id in ids(await _page(api, "officer", tenant=tenants.a, status="failed"))
        assert request_id not in ids(await _page(api, "officer", tenant=tenants.a, status="awaiting_approval"))

    await eventually(failed)


@pytest.mark.parametrize("params", [
    {"page_size": "0"}, {"page_size": "201"}, {"page_size": "many"}, {"kind": "everything"},
    {"status": "sleeping"}, {"due_before": "next tuesday"}, {"tenant": "acme' OR DsrTenant != '"},
    {"color": "blue"}, {"page_token": "not base64!"},
], ids=lambda p: next(iter(p)))
async def test_invalid_filters_are_422(api, params):
    resp = await api.get("/v1/requests", params=params, headers=auth("officer"))
    await assert_problem(resp, 422)


async def test_a_repeated_parameter_and_a_foreign_page_token_are_400(api):
    resp = await api.get("/v1/requests?kind=access&kind=erasure", headers=auth("officer"))
    await assert_problem(resp, 400)
    resp = await api.get("/v1/requests", params={"page_token": "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
                         headers=auth("officer"))
    await assert_problem(resp, 400)


async def test_a_server_without_the_attributes_still_takes_requests(idle_settings, time_skipping_env):
    # The time-skipping test server knows no custom search attribute: the request starts without them.
    async with api_client(idle_settings, time_skipping_env.client) as tc:
        with capture_logs() as logs:
            request_id = await create(tc, "portal-acme", "access")
        assert any(e["event"] == "api.search_attributes_refused" for e in logs)
        description = await time_skipping_env.client.get_workflow_handle(request_id).describe()
        assert description.typed_search_attributes.get(DSR_TENANT) is None


async def test_the_attributes_are_registered_on_a_namespace_without_them(temporal_env):
    client = temporal_env.client
    namespace = f"dsr-sa-{uuid.uuid4().hex[:8]}"
    await client.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)))
    assert await register_search_attributes(client, namespace)
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    assert {"DsrTenant", "DsrKind", "DsrStep", "DsrDueAt"} <= set(listed.custom_attributes)
    assert await register_search_attributes(client, namespace)  # again: nothing to do
