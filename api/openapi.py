"""The API's OpenAPI 3.1 document, served at ``GET /openapi.json`` without a token.

The document is built from code: request bodies and answers are the JSON Schemas (2020-12, the
dialect of OpenAPI 3.1) of the very pydantic models the handlers validate and answer with, under
``#/components/schemas``; the roles of the update routes come from their :class:`api.updates.UpdateRoute`
declarations and those of the codec from :data:`api.codec_endpoint.CODEC_ROLES`. Answers that handlers
build by hand (probes, the task list, partner callbacks, codec payloads) are described by the small models
below. Every error an operation can answer is listed with the RFC 9457 problem schema.

``tests/api/test_openapi.py`` keeps this true: every route of the router (but ``/admin/*``, ``HEAD`` and
``OPTIONS``) must be documented here, every operation documented here must be routed, and each role is
refused exactly where the document says; ``tests/api/test_fuzz.py`` fuzzes the running API against it.
The console under ``/admin`` is HTML for browsers and is not part of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.audit_routes import AuditTrail
from api.callbacks import ConfirmationBody
from api.codec_endpoint import CODEC_ROLES
from api.common import IDEMPOTENCY_HEADER, MAX_BODY_BYTES
from api.decisions import REQUEST_UPDATES
from api.disputes import RESOLUTION, OpenDisputeBody
from api.evidence import EvidenceReport
from api.ids import DISPUTE_ID_PATTERN, REQUEST_ID_PATTERN
from api.listing import ListQuery, RequestList
from api.problems import PROBLEM_JSON
from api.requests_routes import CreateRequestBody
from api.updates import UpdateRoute
from workflows.messages import DisputeStatus
from workflows.models import RequestStatus

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
REF_TEMPLATE = "#/components/schemas/{model}"
BEARER = [{"apiKey": []}, {"oidcJwt": []}]
"""Either scheme: both are ``Authorization: Bearer``; a JWT-shaped token is checked as an OIDC token."""
PUBLIC: list[dict[str, list[str]]] = []
"""No security requirement: the probes, this document, signed links and partner callbacks."""


# --- the shapes of answers that handlers build by hand ---------------------------------------------


class InvalidParam(BaseModel):
    """Where a body is invalid (an entry of a 422 problem's ``errors``); never the submitted value."""

    pointer: str = Field(description="JSON Pointer (as a URI fragment) into the body, e.g. ``#/identities/email``.")
    loc: list[str | int] = Field(description="pydantic's location of the error.")
    type: str = Field(description="pydantic's error type, e.g. ``missing``, ``extra_forbidden``.")
    detail: str = Field(description="What is wrong, phrased without the submitted value.")


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``), the body of every 4xx and 5xx answer."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="The problem kind: a ``tag:dsr-orchestrator,2026:problems/<slug>`` URI, "
                                  "or ``about:blank`` for a plain HTTP error (RFC 9457 §3.1.1, §4.2.1).")
    title: str = Field(description="A short summary of the problem kind.")
    status: int = Field(ge=400, le=599, description="The HTTP status code.")
    detail: str = Field(description="This occurrence explained; never echoes submitted values.")
    instance: str = Field(description="A ``urn:uuid:`` naming this occurrence (logged for 500s).")
    errors: list[InvalidParam] | None = Field(default=None, description="422 ``invalid-body`` only: where.")


class Health(BaseModel):
    """Answer of the probes."""

    status: Literal["ok", "ready"]


class ManualTask(BaseModel):
    """An open manual partner task of the caller's tenant."""

    request_id: str
    system: str
    instructions: str | None = Field(description="The system's configured instructions for the person.")
    contact: str | None = Field(description="Whom to contact (configured).")
    waiting_since: datetime
    confirm: str = Field(description="The path to POST the confirmation to.")


class TaskList(BaseModel):
    """Answer of ``GET /v1/tasks``: oldest first."""

    tasks: list[ManualTask]


class SignalAnswer(BaseModel):
    """Answer of partner callbacks and manual-task confirmations."""

    accepted: bool = Field(description="False when the wait was already over: nothing changed.")
    detail: str | None = Field(default=None, description="Why nothing changed.")


class CodecPayload(BaseModel):
    """One ``temporal.api.common.v1.Payload`` in protobuf's JSON form (empty members are omitted)."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, str] = Field(default_factory=dict, description="Metadata values, base64.")
    data: str = Field(default="", description="The payload's bytes, base64.")


class CodecPayloads(BaseModel):
    """Body and answer of the codec routes (``temporal.api.common.v1.Payloads``; ``{}`` when empty)."""

    model_config = ConfigDict(extra="forbid")

    payloads: list[CodecPayload] = Field(default_factory=list)


# --- operations -------------------------------------------------------------------------------------

Schema = type[BaseModel] | dict[str, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    """A documented success answer."""

    description: str
    schema: Schema | None = None
    media_type: str = "application/json"
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Operation:
    """One documented operation (method and path template)."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    roles: tuple[str, ...] | None
    """None for routes without a bearer token (probes, signed links and callbacks)."""
    answers: dict[int, Answer]
    problems: dict[int, str]
    description: str = ""
    body: type[BaseModel] | None = None
    body_required: bool = True
    parameters: tuple[dict[str, Any], ...] = ()


def _path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


REQUEST_ID = _path_param("id", "The request's opaque id (``req_...``, or a dispute's follow-up request).",
                         REQUEST_ID_PATTERN.pattern)
DISPUTE_ID = _path_param("id", "The dispute's opaque id (``dsp_...``).", DISPUTE_ID_PATTERN.pattern)
SYSTEM = _path_param("system", "A configured system's name.")
CALLBACK_PARAMS = (_path_param("request_id", "The request's opaque id."), SYSTEM)
IDEMPOTENCY = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "Makes retries safe: the same key and body from the same tenant start one workflow only.",
    "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,200}$"},
}
ALL_ROLES = ("portal", "admin", "privacy_officer", "auditor")
READERS = ("admin", "privacy_officer", "auditor")
"""Who reads disputes, tasks and audit trails: an admin its own tenant's, the others every tenant's."""
LOCATION = {"Location": {"description": "The created resource's path.", "required": True,
                         "schema": {"type": "string"}}}

# Problems shared by many operations.
AUTH = {401: "No bearer token, a malformed Authorization header, or a token that is not valid.",
        403: "The token's role may not call this operation."}
BODY = {400: "The body is not JSON (or is empty).",
        413: f"The body is larger than {MAX_BODY_BYTES // 1024} KiB.",
        415: "The body is not ``application/json``.",
        422: "The body does not validate (``errors`` says where, without the submitted values)."}
UNEXPECTED = {500: "An unexpected error; logged by type and stack only, under the problem's ``instance``."}
TEMPORAL = {503: "Temporal did not answer in time, or the workflow could not answer now; retry later."}
TRAIL_PROBLEMS = {**AUTH, 404: "No such request for the token's tenant (also for another tenant's).",
                  **UNEXPECTED, 503: "No orchestrator database is configured, or it does not answer."}
"""What the routes reading the orchestrator's database (audit trail, evidence report) can answer."""


def _query_parameters(model: type[BaseModel]) -> tuple[dict[str, Any], ...]:
    """The query parameters of an operation whose query string ``model`` validates (one value per name)."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        alternatives = [a for a in prop.pop("anyOf", []) if a != {"type": "null"}]
        if len(alternatives) == 1:
            prop = {**alternatives[0], **prop}
        elif alternatives:
            prop["anyOf"] = alternatives
        if prop.get("default", 0) is None:
            del prop["default"]
        description = prop.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return tuple(params)


def _update_operation(path: str, route: UpdateRoute[Any], operation_id: str, summary: str, answer: str) -> Operation:
    noun = route.resource.noun
    return Operation(
        "POST", path, operation_id, summary, f"{noun}s", route.roles,
        answers={200: Answer(answer, route.result)},
        problems={**BODY, **AUTH, 404: f"No such {noun} for the token's tenant (also for another tenant's).",
                  409: f"The workflow refused the {route.noun} (the detail says why), or the {noun} is finished.",
                  **UNEXPECTED,
                  503: f"No worker took the {route.noun} in time (send the same again), or Temporal did not answer."},
        description=f"Sends the ``{route.update}`` workflow update. The actor is the token's name, the tenant "
                    "the token's; sending the very same update again answers the recorded outcome.",
        body=route.body,
        parameters=(DISPUTE_ID if noun == "dispute" else REQUEST_ID,),
    )


_UPDATES: dict[str, tuple[str, str, str]] = {
    "decision": ("decideRequest", "Approve or reject a request", "The recorded decision."),
    "verification": ("verifyRequest", "Record how the subject's identity was verified", "The recorded verification."),
    "extension": ("extendRequest", "Extend the deadline by one or two months (GDPR Art. 12(3))",
                  "The recorded extension, with ``new_due_at``."),
    "cancellation": ("cancelRequest", "Cancel a request before execution", "The recorded cancellation."),
    "objection": ("objectToRequest", "Object to a restriction of an organisation-managed account",
                  "The recorded objection."),
    "retry": ("retrySystem", "Run a system that needs attention again, from its failed step",
              "The system's status after the retry was accepted."),
    "lifting": ("liftRestriction", "End a restriction in force, after notice to the subject",
                "The recorded lifting."),
}


def operations() -> list[Operation]:
    """Every documented operation, in the order of the route table."""
    ops = [
        Operation("GET", "/healthz", "healthz", "The process is up", "operations", None,
                  answers={200: Answer("Up.", Health)}, problems={**UNEXPECTED}),
        Operation("GET", "/readyz", "readyz", "Temporal answers", "operations", None,
                  answers={200: Answer("Ready.", Health)},
                  problems={**UNEXPECTED, 503: "Temporal does not answer its health check."}),
        Operation("GET", "/metrics", "metrics", "Prometheus metrics", "operations", None,
                  description="The Prometheus text exposition: aggregate counts labelled by configured tenant and "
                              "system names, kinds, outcomes and route templates; no personal data, no request ids.",
                  answers={200: Answer("The metrics.", {"type": "string"}, media_type="text/plain")},
                  problems={**UNEXPECTED}),
        Operation("GET", OPENAPI_PATH, "openapi", "This document", "operations", None,
                  answers={200: Answer("The OpenAPI 3.1 document.", {"type": "object"})}, problems={**UNEXPECTED}),
        Operation(
            "POST", "/v1/requests", "createRequest", "Submit a data subject request", "requests", ("portal",),
            description="Starts the request's workflow. The tenant is the token's; a ``tenant`` in the body must "
                        "be the same. Nothing submitted is logged or echoed in errors.",
            answers={201: Answer("The new request's status.", RequestStatus, headers=LOCATION),
                     200: Answer("An idempotent replay: the existing request's status.", RequestStatus,
                                 headers=LOCATION)},
            problems={400: "The body is not JSON, or the Idempotency-Key header is malformed.",
                      **{k: v for k, v in BODY.items() if k != 400}, **AUTH,
                      403: "The token's role may not submit requests, or the body names another tenant.",
                      409: "The Idempotency-Key was used before and its request cannot be read back.",
                      422: "The body does not validate, its details do not fit the kind, the Idempotency-Key "
                           "was used with another body, or the token's tenant is not configured.",
                      **UNEXPECTED, **TEMPORAL},
            body=CreateRequestBody, parameters=(IDEMPOTENCY,),
        ),
        Operation(
            "GET", "/v1/requests", "listRequests", "List requests (Temporal visibility)", "requests",
            ALL_ROLES,
            description="Filters on the request's search attributes, which hold no personal data; ``due_before`` "
                        "and ``due_after`` also take a date (midnight UTC). Portal and admin tokens list their own "
                        "tenant only. Visibility is eventually consistent: a request created a moment ago may be "
                        "missing for a second.",
            answers={200: Answer("One page of requests.", RequestList)},
            problems={400: "A query parameter is repeated, or the page token is not one of this listing's.",
                      **AUTH, 403: "The token's role may not list requests, or ``tenant`` names another tenant "
                                   "than a portal or admin token's.",
                      422: "A query parameter does not validate (``errors`` says which).", **UNEXPECTED, **TEMPORAL},
            parameters=_query_parameters(ListQuery),
        ),
        Operation(
            "GET", "/v1/requests/{id}", "getRequest", "A request's status", "requests", ALL_ROLES,
            description="Step, deadline, recorded gates and, per system, what was found, exported, erased, "
                        "retained and changed.",
            answers={200: Answer("The request's status.", RequestStatus)},
            problems={**AUTH, 404: "No such request for the token's tenant (also for another tenant's).",
                      **UNEXPECTED, **TEMPORAL},
            parameters=(REQUEST_ID,),
        ),
        Operation(
            "GET", "/v1/requests/{id}/audit", "getRequestAudit", "A request's audit records", "requests",
            READERS,
            description="The evidence trail from the orchestrator's database, oldest first: references, counts, "
                        "outcomes and actors' configured names, no personal data. Answered also after Temporal "
                        "forgot the request.",
            answers={200: Answer("The request's audit records.", AuditTrail)},
            problems={**TRAIL_PROBLEMS},
            parameters=(REQUEST_ID,),
        ),
        Operation(
            "GET", "/v1/requests/{id}/evidence", "getRequestEvidence", "A request's evidence report", "requests",
            READERS,
            description="What was asked and when, the deadline and any extension, the decision, each system's "
                        "outcome with counts, what was retained and on which legal ground, when backups will be "
                        "gone, the audit records with their hashes and the tenant's chain head. No personal data.",
            answers={200: Answer("The evidence report.", EvidenceReport)},
            problems={**TEMPORAL, **TRAIL_PROBLEMS},
            parameters=(REQUEST_ID,),
        ),
        Operation(
            "GET", "/v1/requests/{id}/evidence.html", "getRequestEvidenceHtml", "A request's evidence report (HTML)",
            "requests", READERS,
            description="The evidence report as one self-contained HTML page, for people.",
            answers={200: Answer("The evidence report.", {"type": "string"}, media_type="text/html")},
            problems={**TEMPORAL, **TRAIL_PROBLEMS},
            parameters=(REQUEST_ID,),
        ),
    ]
    ops += [_update_operation(path, route, *_UPDATES[route.noun]) for path, route in REQUEST_UPDATES.items()]
    ops += [
        Operation(
            "POST", "/v1/disputes", "openDispute", "Open a dispute: restrict now, decide later", "disputes",
            ("admin",),
            description="Starts the dispute's workflow, which restricts the subject's processing in every system "
                        "that can. Idempotent as for requests.",
            answers={201: Answer("The new dispute's status.", DisputeStatus, headers=LOCATION),
                     200: Answer("An idempotent replay: the existing dispute's status.", DisputeStatus,
                                 headers=LOCATION)},
            problems={400: "The body is not JSON, or the Idempotency-Key header is malformed.",
                      **{k: v for k, v in BODY.items() if k != 400}, **AUTH,
                      409: "The Idempotency-Key was used before and its dispute cannot be read back.",
                      422: "The body does not validate, its details do not fit the requested kind, the "
                           "Idempotency-Key was used with another body, or the token's tenant is not configured.",
                      **UNEXPECTED, **TEMPORAL},
            body=OpenDisputeBody, parameters=(IDEMPOTENCY,),
        ),
        Operation(
            "GET", "/v1/disputes/{id}", "getDispute", "A dispute's status", "disputes", READERS,
            answers={200: Answer("The dispute's status.", DisputeStatus)},
            problems={**AUTH, 404: "No such dispute for the token's tenant (also for another tenant's).",
                      **UNEXPECTED, **TEMPORAL},
            parameters=(DISPUTE_ID,),
        ),
        Operation(
            "GET", "/v1/tasks", "listTasks", "The open manual partner tasks", "tasks", READERS,
            answers={200: Answer("The open tasks, oldest first, with their instructions.", TaskList)},
            problems={**AUTH, **UNEXPECTED, **TEMPORAL},
        ),
        _update_operation("/v1/disputes/{id}/resolution", RESOLUTION, "resolveDispute", "Resolve a dispute",
                          "The dispute's status as the resolution left it."),
        Operation(
            "GET", "/v1/exports/{id}", "downloadExport", "Download an export bundle (signed link)", "exports", None,
            description="The link sent to the subject is its own credential: the signature covers the request id "
                        "and the expiry. A wrong signature and an unknown request are both 404.",
            answers={200: Answer("The bundle (local export store).", {"type": "string", "contentMediaType":
                                                                     "application/zip"}, media_type="application/zip"),
                     302: Answer("A short-lived presigned URL of the bundle (S3 export store).",
                                 headers={"Location": {"required": True, "schema": {"type": "string"}}})},
            problems={404: "No such export, or the signature does not match.", 410: "The link has expired.",
                      **UNEXPECTED},
            parameters=(
                _path_param("id", "The request's opaque id."),
                {"name": "expires", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": "The link's expiry (Unix time)."},
                {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}},
            ),
        ),
    ]
    callback = {400: "A signed body that is not a status.", 403: "The callback is not authentic, or not ours.",
                404: "Unknown system, or no wait for this request.", **UNEXPECTED,
                503: "The partner's certificate cannot be fetched now, or Temporal did not answer."}
    ops += [
        Operation("POST", "/v1/callbacks/opendsr/{request_id}/{system}", "opendsrCallback", "OpenDSR status callback",
                  "callbacks", None, description="Authorised by its ``X-OpenDSR-Signature`` over the raw body.",
                  answers={200: Answer("Signalled (or the wait was already over).", SignalAnswer)},
                  problems=callback, parameters=CALLBACK_PARAMS, body_required=True),
        Operation("POST", "/v1/callbacks/webhook/{request_id}/{system}", "webhookCallback",
                  "Signed webhook partner callback", "callbacks", None,
                  description="Authorised by its HMAC signature and timestamp over the raw body (replay window).",
                  answers={200: Answer("Signalled (or the wait was already over).", SignalAnswer)},
                  problems=callback, parameters=CALLBACK_PARAMS, body_required=True),
        Operation(
            "POST", "/v1/requests/{id}/tasks/{system}/confirmation", "confirmManualTask", "Confirm a manual task",
            "tasks", ("admin",), description="Who and when are recorded; the note is accepted but not stored.",
            answers={200: Answer("Signalled (or the wait was already over).", SignalAnswer)},
            problems={**BODY, **AUTH, 404: "No such request for the token's tenant, no such manual-task system, "
                                           "or no wait for it.", **UNEXPECTED, **TEMPORAL},
            body=ConfirmationBody, body_required=False, parameters=(REQUEST_ID, SYSTEM),
        ),
    ]
    namespace = {"name": "X-Namespace", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "When sent, must name the configured Temporal namespace."}
    codec = {400: "The body is not the JSON form of Payloads.", **AUTH,
             403: "The token's role may not use the codec, or X-Namespace names another namespace.",
             413: "The body is larger than 4 MiB.", 415: "The body is not ``application/json``.", **UNEXPECTED}
    ops += [
        Operation("POST", "/codec/decode", "codecDecode", "Temporal remote codec: open payloads", "codec",
                  CODEC_ROLES, description="For the Temporal Web UI and ``--codec-endpoint``. A token of one tenant "
                                           "gets opened only the payloads naming its tenant; the others as sent.",
                  answers={200: Answer("The payloads, opened where allowed.", CodecPayloads)},
                  problems={**codec, 422: "A payload is sealed with an unknown key, or was altered."},
                  body=CodecPayloads, parameters=(namespace,)),
        Operation("POST", "/codec/encode", "codecEncode", "Temporal remote codec: seal payloads", "codec",
                  CODEC_ROLES, answers={200: Answer("The payloads, sealed with the current key.", CodecPayloads)},
                  problems=codec, body=CodecPayloads, parameters=(namespace,)),
    ]
    return ops


# --- the document ------------------------------------------------------------------------------------


def _schemas(ops: list[Operation]) -> tuple[dict[tuple[type[BaseModel], JsonSchemaMode], Any], dict[str, Any]]:
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ProblemDetails, "serialization"): None}
    for op in ops:
        if op.body is not None:
            models[(op.body, "validation")] = None
        for answer in op.answers.values():
            if isinstance(answer.schema, type):
                models[(answer.schema, "serialization")] = None
    refs, defs = models_json_schema(list(models), ref_template=REF_TEMPLATE)
    schemas = defs.get("$defs", {})
    # The query parameters of the listing refer to these; RequestStatus's schema defines both.
    assert {"RequestKind", "Step"} <= schemas.keys()
    return refs, schemas


def _schema_of(schema: Schema, mode: JsonSchemaMode, refs: dict[Any, Any]) -> dict[str, Any]:
    return refs[(schema, mode)] if isinstance(schema, type) else schema


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": REF_TEMPLATE.format(model="ProblemDetails")}}}}


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    if op.roles is None:
        who = "No bearer token."
    else:
        who = f"Roles: {', '.join(op.roles)}."
        if set(op.roles) & {"portal", "admin"}:
            who += " Portal and admin tokens act on their own tenant only."
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": f"{op.description}\n\n{who}".strip(),
        "tags": [op.tag],
        "security": PUBLIC if op.roles is None else BEARER,
        "x-roles": list(op.roles or ()),
    }
    if op.parameters:
        doc["parameters"] = list(op.parameters)
    if op.body is not None:
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": _schema_of(op.body, "validation", refs)}},
        }
    elif op.method == "POST":  # callbacks: a signed body whose shape the partner's protocol defines
        doc["requestBody"] = {"required": op.body_required,
                              "content": {"application/json": {"schema": {"type": "object"}}}}
    responses: dict[str, Any] = {}
    for status, answer in sorted(op.answers.items()):
        entry: dict[str, Any] = {"description": answer.description}
        if answer.schema is not None:
            entry["content"] = {answer.media_type: {"schema": _schema_of(answer.schema, "serialization", refs)}}
        if answer.headers:
            entry["headers"] = answer.headers
        responses[str(status)] = entry
    for status, description in sorted(op.problems.items()):
        responses[str(status)] = _problem(description)
    doc["responses"] = responses
    return doc


@cache
def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process: it depends on code only, not on configuration)."""
    ops = operations()
    refs, schemas = _schemas(ops)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "DSR Orchestrator API",
            "version": API_VERSION,
            "summary": "Durable fulfilment of GDPR data subject requests.",
            "description": "Every error is an RFC 9457 ``application/problem+json`` document. Bearer tokens are "
                           "API keys (configured as SHA-256 hashes) or OIDC JWTs verified against the identity "
                           "provider's JWKS; each operation's description names the roles it allows.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in ops)],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "An API key from the configuration (``[[api.tokens]]``, stored hashed)."},
                "oidcJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                            "description": "A JWT from the identity provider of ``[api.oidc]``: signature "
                                           "(RS256, ES256) against its JWKS, ``iss``, ``aud``, ``exp``; the "
                                           "role and tenant come from its claims."},
            },
        },
    }


@cache
def _document_bytes() -> bytes:
    return json.dumps(build_document(), separators=(",", ":")).encode()


async def openapi_document(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the OpenAPI 3.1 document of this API (no token needed)."""
    return web.Response(body=_document_bytes(), content_type="application/json")
