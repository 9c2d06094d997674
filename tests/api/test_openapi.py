"""The OpenAPI document: it validates as OpenAPI 3.1, matches the router both ways, says truly which roles each
operation refuses, and real answers conform to the schemas it documents."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from api.openapi import OPENAPI_PATH, build_document
from api.problems import PROBLEM_JSON
from tests.api.support import READER_TOKENS, TOKENS, auth, body, create

METHODS = ("get", "put", "post", "delete", "patch")
# One token per role; portal and admin tokens of tenant acme, the readers of every tenant.
ROLE_TOKENS = {"portal": "portal-acme", "admin": "admin-acme", "privacy_officer": "officer", "auditor": "auditor"}
REQ = "req_aaaaaaaaaaaaaaaaaaaaaaaaaa"
DSP = "dsp_aaaaaaaaaaaaaaaaaaaaaaaaaa"


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (METHOD, path template) the document describes."""
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def routed_operations(tc: TestClient) -> set[tuple[str, str]]:
    """Every (METHOD, path template) of the app's router, but the HTML console and HEAD/OPTIONS."""
    ops = set()
    for route in tc.server.app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "OPTIONS"):
            continue
        path = resource.canonical
        if path == "/admin" or path.startswith("/admin/"):
            continue
        ops.add((route.method, path))
    return ops


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The document's operation object of ``method`` ``path``."""
    return doc["paths"][path][method.lower()]


def assert_conforms(doc: dict[str, Any], method: str, path: str, status: int, media_type: str, value: Any) -> None:
    """Assert that ``status`` is documented for the operation and ``value`` fits its schema for ``media_type``."""
    responses = operation(doc, method, path)["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    schema = responses[str(status)]["content"][media_type]["schema"]
    # The operation's schema, resolved against the document's components (refs are "#/components/schemas/...").
    root = {**schema, "components": doc["components"]}
    errors = list(Draft202012Validator(root).iter_errors(value))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def concrete(path: str) -> str:
    """``path`` with well-formed ids that exist nowhere."""
    path = path.replace("{request_id}", REQ).replace("{system}", "appdb")
    return path.replace("{id}", DSP if path.startswith("/v1/disputes") else REQ)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_document()


async def test_the_document_is_served_without_a_token_and_validates_as_openapi_3_1(idle_api: TestClient) -> None:
    resp = await idle_api.get(OPENAPI_PATH)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    served = await resp.json()
    assert served["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(served).validate()  # raises with the first problem
    assert served == build_document()


def test_a_broken_document_does_not_validate(doc: dict[str, Any]) -> None:
    """The validator is not a rubber stamp: a response without description and a path parameter that is not
    required are caught."""
    no_description = {"/x": {"get": {"responses": {"200": {}}}}}
    optional_path_param = {"/x/{id}": {"get": {"parameters": [{"name": "id", "in": "path", "required": False,
                                                                "schema": {"type": "string"}}],
                                               "responses": {"200": {"description": "x"}}}}}
    for paths in (no_description, optional_path_param):
        assert list(OpenAPIV31SpecValidator({**doc, "paths": paths}).iter_errors()), paths


async def test_every_route_is_documented_and_every_documented_operation_is_routed(
    idle_api: TestClient, doc: dict[str, Any]
) -> None:
    routed, documented = routed_operations(idle_api), documented_operations(doc)
    assert routed - documented == set(), "routes missing from api/openapi.py"
    assert documented - routed == set(), "documented operations that no route serves"
    assert not any(path.startswith("/admin") for _, path in documented)


def test_every_operation_documents_its_errors_as_problems_and_names_its_roles(doc: dict[str, Any]) -> None:
    for method, path in documented_operations(doc):
        op = operation(doc, method, path)
        statuses = {int(s) for s in op["responses"]}
        assert any(200 <= s < 400 for s in statuses), (method, path)
        assert 500 in statuses, (method, path)
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)
                assert response["content"][PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/ProblemDetails"}
        roles = op["x-roles"]
        if roles:
            assert op["security"] and {401, 403} <= statuses, (method, path)
            assert f"Roles: {', '.join(roles)}." in op["description"], (method, path)
        else:
            assert op["security"] == [], (method, path)
        if "requestBody" in op and op["x-roles"]:
            assert {400, 415} <= statuses, (method, path)
        if re.search(r"\{\w+\}", path):
            assert 404 in statuses, (method, path)
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "oidcJwt"}


def test_body_schemas_are_the_handlers_pydantic_models(doc: dict[str, Any]) -> None:
    from api.decisions import DecisionBody
    from api.requests_routes import CreateRequestBody

    create_op = operation(doc, "POST", "/v1/requests")
    assert create_op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateRequestBody"}
    schemas = doc["components"]["schemas"]
    assert set(schemas["CreateRequestBody"]["properties"]) == set(CreateRequestBody.model_fields)
    assert schemas["CreateRequestBody"]["additionalProperties"] is False
    assert schemas["DecisionBody"]["properties"]["outcome"]["enum"] == list(
        DecisionBody.model_fields["outcome"].annotation.__args__)  # type: ignore[union-attr]


@pytest.mark.parametrize("role", sorted(ROLE_TOKENS))
async def test_each_role_is_refused_exactly_where_the_document_says(
    idle_api: TestClient, doc: dict[str, Any], role: str
) -> None:
    token = ROLE_TOKENS[role]
    assert token in {**TOKENS, **READER_TOKENS} and {**TOKENS, **READER_TOKENS}[token][0] == role
    checked = 0
    for method, path in sorted(documented_operations(doc)):
        op = operation(doc, method, path)
        if not op["x-roles"]:
            continue
        kwargs: dict[str, Any] = {"headers": auth(token)}
        if method == "POST":
            kwargs["json"] = {}
        resp = await idle_api.request(method, concrete(path), **kwargs)
        answer = await resp.json(content_type=None)
        refused_for_role = resp.status == 403 and answer.get("type", "").endswith("/forbidden-role")
        assert refused_for_role == (role not in op["x-roles"]), (method, path, resp.status, answer)
        checked += 1
    assert checked >= 15


async def test_real_answers_conform_to_the_documented_schemas(live_api: TestClient, doc: dict[str, Any]) -> None:
    resp = await live_api.post("/v1/requests", json=body("erasure"), headers=auth("portal-acme"))
    assert resp.status == 201
    assert_conforms(doc, "POST", "/v1/requests", 201, "application/json", await resp.json())
    request_id = (await resp.json())["id"]

    resp = await live_api.get(f"/v1/requests/{request_id}", headers=auth("admin-acme"))
    assert resp.status == 200
    assert_conforms(doc, "GET", "/v1/requests/{id}", 200, "application/json", await resp.json())

    resp = await live_api.post(f"/v1/requests/{request_id}/extension", json={"months": 2, "reason": "ten years"},
                               headers=auth("admin-acme"))
    assert resp.status == 200, await resp.text()
    assert_conforms(doc, "POST", "/v1/requests/{id}/extension", 200, "application/json", await resp.json())

    # A 422 problem lists where the body is invalid.
    resp = await live_api.post("/v1/requests", json={"kind": "erasure", "identities": {"email": "not-an-email"},
                                                     "surplus": 1}, headers=auth("portal-acme"))
    assert resp.status == 422 and resp.content_type == PROBLEM_JSON
    problem = await resp.json(content_type=None)
    assert problem["errors"]
    assert_conforms(doc, "POST", "/v1/requests", 422, PROBLEM_JSON, problem)
    # ... and a problem that breaks the schema is caught (the check can fail).
    with pytest.raises(AssertionError):
        assert_conforms(doc, "POST", "/v1/requests", 422, PROBLEM_JSON, {**problem, "status": "422"})
    with pytest.raises(AssertionError):
        assert_conforms(doc, "POST", "/v1/requests", 418, PROBLEM_JSON, problem)

    other = await create(live_api, "portal-globex")
    resp = await live_api.get(f"/v1/requests/{other}", headers=auth("admin-acme"))
    assert resp.status == 404
    assert_conforms(doc, "GET", "/v1/requests/{id}", 404, PROBLEM_JSON, await resp.json(content_type=None))

    resp = await live_api.get("/v1/tasks", headers=auth("admin-acme"))
    assert_conforms(doc, "GET", "/v1/tasks", resp.status, "application/json", await resp.json())
    resp = await live_api.get("/v1/requests", params={"kind": "erasure"}, headers=auth("officer"))
    assert_conforms(doc, "GET", "/v1/requests", resp.status, "application/json", await resp.json())
    resp = await live_api.post("/codec/encode", json={"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="},
                                                                     "data": "e30="}]}, headers=auth("admin-acme"))
    assert_conforms(doc, "POST", "/codec/encode", resp.status, "application/json", await resp.json())
    resp = await live_api.get("/readyz")
    assert_conforms(doc, "GET", "/readyz", resp.status, "application/json", await resp.json())
