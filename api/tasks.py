"""``GET /v1/tasks``: manual partner tasks waiting for a person (admin: their tenant's; officer, auditor: all).

Each open task is a running ``PartnerWaitWorkflow`` of a ``manual_task`` system; Temporal's visibility
lists them (by workflow type and status: no personal data in the query) and the wait's memo names its
tenant. The instructions come from the system's configuration; the person confirms with
``POST /v1/requests/{id}/tasks/{system}/confirmation``.
"""

from __future__ import annotations

from aiohttp import web

from api.auth import require_role
from api.common import CLIENT, SETTINGS
from workflows.partner import PARTNER_WAIT_WORKFLOW

MAX_TASKS = 500
QUERY = f"WorkflowType = '{PARTNER_WAIT_WORKFLOW}' AND ExecutionStatus = 'Running'"


async def list_tasks(request: web.Request) -> web.Response:
    """The open manual tasks the caller may see (their tenant's, or every tenant's), oldest first."""
    principal = require_role(request, "admin", "privacy_officer", "auditor")
    settings = request.app[SETTINGS]
    manual = {name: cfg for name, cfg in settings.systems.items() if cfg.type == "manual_task"}
    tasks = []
    if manual:
        async for execution in request.app[CLIENT].list_workflows(QUERY, limit=MAX_TASKS):
            request_id, _, system = execution.id.partition("/partner/")
            if system not in manual:
                continue
            tenant = (await execution.memo()).get("tenant")
            if principal.tenant is not None and tenant != principal.tenant:
                continue
            options = manual[system].options()
            tasks.append({
                "request_id": request_id,
                "tenant": tenant,
                "system": system,
                "instructions": options.get("instructions"),
                "contact": options.get("contact"),
                "waiting_since": execution.start_time.isoformat(),
                "confirm": f"/v1/requests/{request_id}/tasks/{system}/confirmation",
            })
    tasks.sort(key=lambda t: t["waiting_since"])
    return web.json_response({"tasks": tasks})
