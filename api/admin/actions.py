"""The console's actions: the same workflow updates and signals as the JSON API, from form fields.

Each action is one of the JSON API's :class:`api.updates.UpdateRoute` declarations (roles, body model, how
the update's input is built from the body and the caller): the form's fields become the body, validated by
the same model, and the update goes out with the same content-derived id, so a form posted twice records
one decision. Refusals come back as :class:`api.problems.Problem`, whose details are phrased for people
and never carry personal data; the views show them on the page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.auth import Principal, require_role
from api.callbacks import signal_partner_wait
from api.common import (
    CLIENT,
    SETTINGS,
    Found,
    Resource,
    build_model,
    describe,
    find_for_tenant,
    parse_body,
)
from api.decisions import DECISION, EXTENSION, LIFTING, OBJECTION, RETRY
from api.disputes import RESOLUTION
from api.problems import Problem
from api.requests_routes import REQUESTS
from api.updates import UpdateRoute
from api.updates import send_update as send_workflow_update
from connectors.partners.manual import REFERENCE as MANUAL_REFERENCE
from workflows.tasks import PartnerStatus


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def _months(form: Mapping[str, Any]) -> int | str:
    value = _text(form, "months")
    return int(value) if value in ("1", "2") else value  # anything else fails the body model's Literal[1, 2]


@dataclass(frozen=True, slots=True)
class FormAction:
    """A console form that sends one update.

    Attributes:
        route: The JSON API's declaration of the update.
        body: The update's body from the form's fields.
        done: What the page says once it is recorded.
    """

    route: UpdateRoute[Any]
    body: Callable[[Mapping[str, Any]], dict[str, Any]]
    done: str


ACTIONS: dict[str, FormAction] = {
    "decision": FormAction(DECISION, lambda f: {"outcome": _text(f, "outcome"), "reason": _text(f, "reason")},
                           "The decision is recorded."),
    "extension": FormAction(EXTENSION, lambda f: {"months": _months(f), "reason": _text(f, "reason")},
                            "The deadline is extended."),
    "objection": FormAction(OBJECTION, lambda f: {"reason": _text(f, "reason")}, "The objection is recorded."),
    "lifting": FormAction(LIFTING, lambda f: {"reason": _text(f, "reason")}, "The lifting is scheduled."),
    "retry": FormAction(RETRY, lambda f: {"system": _text(f, "system")}, "The system runs again."),
    "resolution": FormAction(RESOLUTION, lambda f: {"outcome": _text(f, "outcome"), "reason": _text(f, "reason")},
                             "The dispute is resolved."),
}
"""The update actions by the last segment of their console path (and the JSON API's)."""
DONE_MESSAGES = {name: action.done for name, action in ACTIONS.items()} | {
    "confirmation": "The manual task is confirmed.",
}


def may(principal: Principal, action: str) -> bool:
    """Whether the principal's role may take ``action`` (as in the JSON API; manual tasks: admins)."""
    if action == "confirmation":
        return principal.role == "admin"
    return principal.role in ACTIONS[action].route.roles


async def find(app: web.Application, resource: Resource[Any], workflow_id: str, principal: Principal) -> Found:
    """The principal's tenant's workflow ``workflow_id`` (any tenant's for a principal of all tenants).

    Raises:
        Problem: 404 for a malformed id, a missing workflow or another tenant's (indistinguishable).
    """
    client = app[CLIENT]
    if principal.tenant is not None:
        found, _ = await find_for_tenant(client, resource, workflow_id, principal.tenant)
        return found
    if not resource.id_pattern.fullmatch(workflow_id):
        raise resource.not_found()
    described = await describe(client, resource, workflow_id)
    if described is None:
        raise resource.not_found()
    return described


async def send_update(request: web.Request, action: FormAction, workflow_id: str,
                      form: Mapping[str, Any]) -> Any:
    """Send ``action``'s update to the workflow, as the signed-in principal, from the form's fields.

    Returns:
        The update's result.

    Raises:
        Problem: 403 for a role that may not send it, 404 as :func:`find`, 422 for invalid fields, 409 when
            the workflow refuses it (with its reason) or has finished, 503 when no worker took it in time.
    """
    route = action.route
    principal = require_role(request, *route.roles)
    if not route.resource.id_pattern.fullmatch(workflow_id):
        raise route.resource.not_found()
    body = parse_body(route.body, action.body(form))
    payload = build_model(lambda: route.build(body, principal), f"the {route.noun} cannot be recorded as given")
    found = await find(request.app, route.resource, workflow_id, principal)
    return await send_workflow_update(request.app, route, found.handle, workflow_id, payload)


async def confirm_task(request: web.Request, request_id: str, system: str) -> bool:
    """Confirm a manual task of the principal's tenant's request, as ``POST .../tasks/{system}/confirmation``.

    Returns:
        Whether the wait took it (False: it was over already).

    Raises:
        Problem: 403 for a role other than admin, 404 for another tenant's request or no such manual system.
    """
    principal = require_role(request, "admin")
    await find(request.app, REQUESTS, request_id, principal)
    configured = request.app[SETTINGS].systems.get(system)
    if configured is None or configured.type != "manual_task":
        raise Problem(404, "no such manual task", slug="not-found", title="Not Found")
    signal = PartnerStatus(status="completed", received_at=datetime.now(UTC), reference=MANUAL_REFERENCE,
                           actor=principal.name)
    response = await signal_partner_wait(request, request_id, system, signal)
    return bool(json.loads(response.text or "{}").get("accepted"))
