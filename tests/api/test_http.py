"""The HTTP surface: the route table, authentication and roles, probes, errors, and the server itself."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.problems import PROBLEM_JSON
from api.server import run_api
from tests.api.support import (
    EMAIL,
    TOKENS,
    api_client,
    assert_problem,
    auth,
    body,
    dispute_body,
    expected_dispute_id,
    expected_id,
    key,
    workflow_exists,
)
from workers.config import Settings

REQ = "req_aaaaaaaaaaaaaaaaaaaaaaaaaa"
DSP = "dsp_aaaaaaaaaaaaaaaaaaaaaaaaaa"

# method, path, roles allowed, a valid body.
ROUTES: list[tuple[str, str, set[str], dict[str, Any] | None]] = [
    ("POST", "/v1/requests", {"portal"}, body()),
    ("GET", "/v1/requests/{id}", {"portal", "admin", "privacy_officer", "auditor"}, None),
    ("POST", "/v1/requests/{id}/decision", {"admin"}, {"outcome": "approve"}),
    ("POST", "/v1/requests/{id}/verification", {"portal", "admin"}, {"method": "email-link"}),
    ("POST", "/v1/requests/{id}/extension", {"admin", "privacy_officer"}, {"months": 1, "reason": "many systems"}),
    ("POST", "/v1/requests/{id}/cancellation", {"portal", "admin"}, {}),
    ("POST", "/v1/requests/{id}/objection", {"admin"}, {"reason": "legal hold"}),
    ("POST", "/v1/requests/{id}/retry", {"admin"}, {"system": "appdb"}),
    ("POST", "/v1/requests/{id}/lifting", {"admin"}, {"reason": "verified"}),
    ("POST", "/v1/requests/{id}/tasks/{system}/confirmation", {"admin"}, {}),
    ("POST", "/v1/disputes", {"admin"}, dispute_body()),
    ("GET", "/v1/disputes/{id}", {"admin", "privacy_officer", "auditor"}, None),
    ("GET", "/v1/tasks", {"admin", "privacy_officer", "auditor"}, None),
    ("POST", "/v1/disputes/{id}/resolution", {"admin"}, {"outcome": "company_prevails", "reason": "accurate"}),
]


def concrete(path: str) -> str:
    """``path`` with a well-formed id of the right kind that does not exist."""
    return path.replace("{id}", DSP if path.startswith("/v1/disputes") else REQ).replace("{system}", "appdb")


def test_route_table(idle_settings, temporal_env):
    app = create_app(idle_settings, temporal_env.client)
    registered = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    # The probes need no token; the export download is authorised by its signed link (tests/api/test_exports.py).
    signed_or_public = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/exports/{id}"),
                        ("POST", "/v1/callbacks/opendsr/{request_id}/{system}"),
                        ("POST", "/v1/callbacks/webhook/{request_id}/{system}")}
    expected = {(m, p) for m, p, _, _ in ROUTES} | signed_or_public
    # Every route here exists; that every route has its permissions stated is tests/api/test_permissions.py's.
    assert expected <= registered


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status", "challenge"),
    [
        (None, 401, 'Bearer realm="dsr"'),
        ("Bearer not-a-configured-token", 401, 'Bearer realm="dsr", error="invalid_token"'),
        ("Basic dXNlcjpwYXNz", 401, 'Bearer realm="dsr", error="invalid_request"'),
        ("Bearer", 401, 'Bearer realm="dsr", error="invalid_request"'),
        ("Bearer tok-admin-acme-7c1f0e9a", 403, None),  # an admin does not create requests
    ],
    ids=["missing", "unknown", "basic", "empty", "wrong-role"],
)
async def test_creation_needs_a_portal_token(idle_api, temporal_env, authorization, status, challenge):
    k = key()
    headers = {"Idempotency-Key": k}
    if authorization:
        headers["Authorization"] = authorization
    resp = await idle_api.post("/v1/requests", json=body(), headers=headers)
    await assert_problem(resp, status)
    assert resp.headers.get("WWW-Authenticate") == challenge
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))

@pytest.mark.parametrize(("method", "path", "roles", "payload"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
async def test_every_route_refuses_the_roles_it_must(idle_api, temporal_env, method, path, roles, payload):
    for token, (role, tenant) in TOKENS.items():
        if role in roles:
            continue
        k = key()
        resp = await idle_api.request(method, concrete(path), json=payload,
                                      headers={**auth(token), "Idempotency-Key": k})
        doc = await assert_problem(resp, 403)
        named = doc["detail"].removeprefix("this operation needs the ").removesuffix(" role").split(" or ")
        assert set(named) == roles, doc["detail"]
        assert not await workflow_exists(temporal_env.client, expected_id(idle_api, tenant, k))
        assert not await workflow_exists(temporal_env.client, expected_dispute_id(idle_api, tenant, k))


async def test_every_route_but_the_probes_needs_a_token(idle_api):
    for method, path in [*((m, concrete(p)) for m, p, _, _ in ROUTES), ("GET", "/nowhere")]:
        resp = await idle_api.request(method, path)
        await assert_problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")



async def test_probes(idle_api, idle_settings, temporal_env):
    resp = await idle_api.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    resp = await idle_api.get("/readyz")
    assert (resp.status, await resp.json()) == (200, {"status": "ready"})

    # A Temporal that cannot be reached: up, but not ready.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    unreachable = await Client.connect(dead, lazy=True, data_converter=temporal_env.client.data_converter)
    async with api_client(idle_settings, unreachable) as tc:
        assert (await tc.get("/healthz")).status == 200
        resp = await tc.get("/readyz")
        await assert_problem(resp, 503)


# --- HTTP errors and unexpected ones ------------------------------------------------------


async def test_unknown_route_and_method_are_problems(idle_api):
    doc = await assert_problem(await idle_api.get("/v1/jane.doe@example.com", headers=auth("portal-acme")), 404)
    assert "jane" not in str(doc)
    resp = await idle_api.delete("/v1/requests", headers=auth("portal-acme"))
    await assert_problem(resp, 405)
    assert resp.headers["Allow"] == "GET, HEAD, POST"
async def test_unknown_or_malformed_ids_are_404(idle_api):
    malformed = ["jane.doe@example.com", "req_short", "REQ_AAAAAAAAAAAAAAAAAAAAAAAAAA", "req_" + "a" * 27,
                 DSP.replace("dsp_", "req_x")]
    for request_id in [REQ, DSP + "-followup", DSP, *malformed]:
        for method, path, roles, payload in ROUTES:
            if "{id}" not in path or not path.startswith("/v1/requests"):
                continue
            token = "portal-acme" if "portal" in roles else "admin-acme"
            resp = await idle_api.request(method, path.replace("{id}", request_id).replace("{system}", "appdb"),
                                          json=payload, headers=auth(token))
            doc = await assert_problem(resp, 404)
            assert doc["detail"] == "no such request" and "jane" not in str(doc)
    for dispute_id in [DSP, REQ, "dsp_short", "jane.doe@example.com"]:
        for method, path, _, payload in ROUTES:
            if "{id}" in path and path.startswith("/v1/disputes"):
                resp = await idle_api.request(method, path.replace("{id}", dispute_id), json=payload,
                                              headers=auth("admin-acme"))
                doc = await assert_problem(resp, 404)
                assert doc["detail"] == "no such dispute" and "jane" not in str(doc)


async def test_an_unexpected_error_is_a_bare_500(idle_settings, temporal_env):
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(f"cannot reach {EMAIL}")

    def add_route(app: web.Application) -> None:
        app.router.add_get("/v1/boom", boom)

    async with api_client(idle_settings, temporal_env.client, add_route) as tc:
        with capture_logs() as logs:
            resp = await tc.get("/v1/boom", headers=auth("portal-acme"))
        doc = await assert_problem(resp, 500)
    assert doc["type"] == "about:blank"
    text = await resp.text()
    assert "RuntimeError" not in text and "jane" not in text and "Traceback" not in text
    [error] = [e for e in logs if e["event"] == "api.unhandled_error"]
    assert error["error_type"] == "builtins.RuntimeError" and error["route"] == "/v1/boom"
    assert error["instance"] == doc["instance"]  # the occurrence the caller sees is the one logged
    assert "jane" not in str(logs)
    [access] = [e for e in logs if e["event"] == "api.request"]
    assert access["status"] == 500


# --- the server -----------------------------------------------------------------------------


async def test_run_api_serves_until_stopped(idle_settings: Settings, temporal_env: WorkflowEnvironment):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = idle_settings.model_copy(update={"api": idle_settings.api.model_copy(update={"port": port})})
    stop = asyncio.Event()
    task = asyncio.create_task(run_api(settings, temporal_env.client, stop))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"{url}/healthz") as resp:
                    assert resp.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the API did not start")
        async with session.get(f"{url}/v1/requests/x", headers=auth("portal-acme")) as resp:
            assert resp.status == 404 and resp.content_type == PROBLEM_JSON
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{url}/healthz"):
                pass


def test_create_app_stores_settings_and_client(idle_settings, temporal_env):
    from api.app import CLIENT, SETTINGS

    app = create_app(idle_settings, temporal_env.client)
    assert app[SETTINGS] is idle_settings and app[CLIENT] is temporal_env.client
