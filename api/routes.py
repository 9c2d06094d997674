"""The route table, and the health probes.

| Method | Path                                | Roles          | Handler / workflow call                       |
|--------|-------------------------------------|----------------|-----------------------------------------------|
| GET    | /healthz                            | (none)         | the process is up                             |
| GET    | /readyz                             | (none)         | Temporal answers                              |
| GET    | /openapi.json                       | (none)         | the OpenAPI 3.1 document (api/openapi.py)     |
| GET    | /metrics                            | (none)         | Prometheus metrics (workers/metrics.py)       |
| POST   | /v1/requests                        | portal         | start ``DataSubjectRequestWorkflow``          |
| GET    | /v1/requests                        | all four       | list by search attributes (api/listing.py)    |
| GET    | /v1/requests/{id}                   | all four       | query ``status``                              |
| GET    | /v1/requests/{id}/audit             | admin, po, aud | ``dsr_audit`` rows (api/audit_routes.py)      |
| GET    | /v1/requests/{id}/evidence[.html]   | admin, po, aud | the evidence report (api/evidence.py)         |
| POST   | /v1/requests/{id}/decision          | admin          | update ``decide``                             |
| POST   | /v1/requests/{id}/verification      | portal, admin  | update ``verify``                             |
| POST   | /v1/requests/{id}/extension         | admin, po      | update ``extend``                             |
| POST   | /v1/requests/{id}/cancellation      | portal, admin  | update ``cancel``                             |
| POST   | /v1/requests/{id}/objection         | admin          | update ``object``                             |
| POST   | /v1/requests/{id}/retry             | admin          | update ``retry_system`` (needs attention)     |
| POST   | /v1/requests/{id}/lifting           | admin          | update ``lift`` (a restriction in force)      |
| POST   | /v1/disputes                        | admin          | start ``DisputeWorkflow``                     |
| GET    | /v1/disputes/{id}                   | admin, po, aud | query ``status``                              |
| GET    | /v1/tasks                           | admin, po, aud | open manual partner tasks (visibility)        |
| POST   | /v1/disputes/{id}/resolution        | admin          | update ``resolve``                            |
| GET    | /v1/exports/{id}?expires&signature  | (signed link)  | the export bundle, while the link is valid    |
| POST   | /v1/callbacks/opendsr/{rid}/{sys}   | (signed body)  | signal ``partner_status`` (api/callbacks.py)  |
| POST   | /v1/callbacks/webhook/{rid}/{sys}   | (signed body)  | signal ``partner_status`` (api/callbacks.py)  |
| POST   | /v1/requests/{id}/tasks/{sys}/confirmation | admin   | signal ``partner_status`` with the actor      |
| POST   | /codec/decode, /codec/encode        | admin, p. officer | Temporal's remote codec (codec_endpoint.py) |

Every route but the probes, /metrics, the export link and partner callbacks needs a bearer token (an API key,
or an OIDC JWT: api/auth.py). Roles: ``portal`` and ``admin`` are bound to one tenant; ``privacy_officer``
("po": reads every tenant's requests, disputes, tasks and audit trails, and extends deadlines) and ``auditor``
("aud": reads the same, changes nothing) see every tenant unless their token names one.

Permissions, per role (tests/api/test_permissions.py proves every cell, for every route of the router):

| Route                                         | portal | admin | privacy_officer | auditor |
|-----------------------------------------------|--------|-------|-----------------|---------|
| POST /v1/requests                             | own    | 403   | 403             | 403     |
| GET /v1/requests                              | own    | own   | all             | all     |
| GET /v1/requests/{id}                         | own    | own   | all             | all     |
| GET /v1/requests/{id}/audit                   | 403    | own   | all             | all     |
| GET /v1/requests/{id}/evidence[.html]         | 403    | own   | all             | all     |
| POST /v1/requests/{id}/decision               | 403    | own   | 403             | 403     |
| POST /v1/requests/{id}/verification           | own    | own   | 403             | 403     |
| POST /v1/requests/{id}/extension              | 403    | own   | all             | 403     |
| POST /v1/requests/{id}/cancellation           | own    | own   | 403             | 403     |
| POST /v1/requests/{id}/objection, /retry, /lifting | 403 | own | 403             | 403     |
| POST /v1/requests/{id}/tasks/{sys}/confirmation | 403  | own   | 403             | 403     |
| POST /v1/disputes, /v1/disputes/{id}/resolution | 403  | own   | 403             | 403     |
| GET /v1/disputes/{id}, GET /v1/tasks          | 403    | own   | all             | all     |

"own": only the token's tenant; another tenant's request or dispute is answered 404, as if it did not
exist (and a listing filter naming another tenant is 403). 403 is answered for the role before anything
else is looked at; 401 without a valid token.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from api.audit_routes import get_audit
from api.callbacks import confirm_manual_task, opendsr_callback, webhook_callback
from api.codec_endpoint import setup_codec_routes
from api.common import CLIENT, RETRY_AFTER_SECONDS, SETTINGS
from api.decisions import REQUEST_UPDATES
from api.disputes import RESOLUTION, get_dispute, open_dispute
from api.evidence import get_evidence, get_evidence_html
from api.exports import download_export
from api.listing import list_requests
from api.openapi import OPENAPI_PATH, openapi_document
from api.problems import Problem
from api.requests_routes import create_request, get_request
from api.tasks import list_tasks
from api.updates import update_handler
from workers.metrics import metrics_response


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: Temporal answers its health check (503 problem otherwise)."""
    client = request.app[CLIENT]
    try:
        serving = await client.service_client.check_health(timeout=timedelta(seconds=2))
    except Exception:
        serving = False
    if not serving:
        raise Problem(503, "the workflow service is not reachable", slug="not-ready", title="Not ready",
                      headers={"Retry-After": RETRY_AFTER_SECONDS})
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus metrics of this process, without a token like the probes.

    Scrapers run without tokens, and nothing here names a subject or a request: counts by tenant, kind,
    system, outcome and route template. ``metrics.api_route = false`` removes the route.
    """
    return metrics_response()


def setup_routes(app: web.Application) -> None:
    """Register the API's routes on ``app``."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(OPENAPI_PATH, openapi_document)  # the OpenAPI 3.1 document (api/openapi.py)
    if app[SETTINGS].metrics.api_route:
        app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/requests", create_request)
    app.router.add_get("/v1/requests", list_requests)
    app.router.add_get("/v1/requests/{id}", get_request)
    app.router.add_get("/v1/requests/{id}/audit", get_audit)
    app.router.add_get("/v1/requests/{id}/evidence", get_evidence)
    app.router.add_get("/v1/requests/{id}/evidence.html", get_evidence_html)
    for path, route in REQUEST_UPDATES.items():
        app.router.add_post(path, update_handler(route))
    app.router.add_post("/v1/disputes", open_dispute)
    app.router.add_get("/v1/disputes/{id}", get_dispute)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_post("/v1/disputes/{id}/resolution", update_handler(RESOLUTION))
    app.router.add_get("/v1/exports/{id}", download_export)
    app.router.add_post("/v1/callbacks/opendsr/{request_id}/{system}", opendsr_callback)
    app.router.add_post("/v1/callbacks/webhook/{request_id}/{system}", webhook_callback)
    app.router.add_post("/v1/requests/{id}/tasks/{system}/confirmation", confirm_manual_task)
    setup_codec_routes(app)  # POST /codec/encode, /codec/decode (Temporal's remote codec protocol)
