"""The route table, and the health probes.

| Method | Path                                | Roles          | Handler / workflow call                       |
|--------|-------------------------------------|----------------|-----------------------------------------------|
| GET    | /healthz                            | (none)         | the process is up                             |
| GET    | /readyz                             | (none)         | Temporal answers                              |
| POST   | /v1/requests                        | portal         | start ``DataSubjectRequestWorkflow``          |
| GET    | /v1/requests/{id}                   | portal, admin  | query ``status``                              |
| POST   | /v1/requests/{id}/decision          | admin          | update ``decide``                             |
| POST   | /v1/requests/{id}/verification      | portal, admin  | update ``verify``                             |
| POST   | /v1/requests/{id}/extension         | admin          | update ``extend``                             |
| POST   | /v1/requests/{id}/cancellation      | portal, admin  | update ``cancel``                             |
| POST   | /v1/requests/{id}/objection         | admin          | update ``object``                             |
| POST   | /v1/requests/{id}/retry             | admin          | update ``retry_system`` (needs attention)     |
| POST   | /v1/requests/{id}/lifting           | admin          | update ``lift`` (a restriction in force)      |
| POST   | /v1/disputes                        | admin          | start ``DisputeWorkflow``                     |
| GET    | /v1/disputes/{id}                   | admin          | query ``status``                              |
| GET    | /v1/tasks                           | admin          | open manual partner tasks (visibility)        |
| POST   | /v1/disputes/{id}/resolution        | admin          | update ``resolve``                            |
| GET    | /v1/exports/{id}?expires&signature  | (signed link)  | the export bundle, while the link is valid    |
| POST   | /v1/callbacks/opendsr/{rid}/{sys}   | (signed body)  | signal ``partner_status`` (api/callbacks.py)  |
| POST   | /v1/callbacks/webhook/{rid}/{sys}   | (signed body)  | signal ``partner_status`` (api/callbacks.py)  |
| POST   | /v1/requests/{id}/tasks/{sys}/confirmation | admin   | signal ``partner_status`` with the actor      |

Every route but the probes, the export link and partner callbacks needs a bearer token, and acts
only on its token's tenant: another tenant's request or dispute is answered 404, as if it did not exist.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from api.callbacks import confirm_manual_task, opendsr_callback, webhook_callback
from api.common import CLIENT, RETRY_AFTER_SECONDS
from api.decisions import REQUEST_UPDATES
from api.disputes import RESOLUTION, get_dispute, open_dispute
from api.exports import download_export
from api.problems import Problem
from api.requests_routes import create_request, get_request
from api.tasks import list_tasks
from api.updates import update_handler


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


def setup_routes(app: web.Application) -> None:
    """Register the API's routes on ``app``."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/v1/requests", create_request)
    app.router.add_get("/v1/requests/{id}", get_request)
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
