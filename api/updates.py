"""One handler for every route that sends a workflow update (decide, verify, extend, cancel, object, resolve).

Each route is declared as an :class:`UpdateRoute`: who may call it, the body it takes, how
the update's input is built from the body and the caller. The handler does the rest the
same way for all of them:

- 403 for a role that may not send it; 404 for a malformed id, a missing workflow, or
  another tenant's (indistinguishable);
- 400/415/422 for a body that cannot be read or validated, before Temporal is asked;
- the update is sent with an id derived from its content (:func:`api.ids.update_id`), so
  resending the very same update answers the recorded outcome rather than a conflict;
- 409 when the workflow's validator refuses it, with the validator's message (validators
  phrase their refusals for the caller and never include personal data); 409 too when the
  workflow has finished meanwhile; 503 when no worker took the update in time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal, Role, require_role
from api.common import (
    CLIENT,
    REQUEST_ID,
    SECRETS,
    UPDATE_TIMEOUT,
    Resource,
    build_model,
    find_for_tenant,
    parse_body,
    read_json,
    unavailable,
)
from api.ids import update_id
from api.problems import Problem

B = TypeVar("B", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class UpdateRoute(Generic[B]):
    """A route that sends one workflow update.

    Attributes:
        resource: The kind of workflow addressed by the path's ``{id}``.
        update: The workflow's update name.
        noun: What the update is called in problems ("decision", "extension").
        roles: The roles allowed to send it (always to their own tenant's workflows only).
        body: The body model (``extra="forbid"``).
        build: The update's input from the validated body and the caller (actor, tenant).
        result: The update's result model; None to answer its JSON as it comes.
    """

    resource: Resource[Any]
    update: str
    noun: str
    roles: tuple[Role, ...]
    body: type[B]
    build: Callable[[B, Principal], BaseModel]
    result: type[BaseModel] | None = None

    def refused(self, detail: str) -> Problem:
        """The 409 answered when the workflow does not take the update."""
        return Problem(409, detail, slug=f"{self.noun}-refused", title=f"{self.noun.capitalize()} refused")


async def send_update(app: web.Application, route: UpdateRoute[Any], handle: WorkflowHandle[Any, Any],
                      workflow_id: str, payload: BaseModel) -> Any:
    """Send ``route``'s update to ``handle``, once per content (its update id): for the API and the console.

    Raises:
        Problem: 409 when the workflow refuses it (with its reason) or has finished, 503 when no worker took
            it in time.
    """
    try:
        return await handle.execute_update(
            route.update,
            payload,
            id=update_id(app[SECRETS], route.update, workflow_id, payload),
            result_type=route.result,
            rpc_timeout=UPDATE_TIMEOUT,
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        detail = cause.message if isinstance(cause, ApplicationError) else f"the {route.noun} was refused"
        raise route.refused(detail) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise unavailable(f"the {route.resource.noun} did not take the {route.noun} in time; "
                          "send the same one again") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # the workflow finished (or is gone) meanwhile
            raise route.refused(f"the {route.resource.noun} is finished; it takes no {route.noun}") from None
        raise


def update_handler(route: UpdateRoute[Any]) -> Handler:
    """The aiohttp handler of ``route`` (see the module's docstring for what it answers)."""

    async def handle(request: web.Request) -> web.Response:
        principal = require_role(request, *route.roles)
        client = request.app[CLIENT]
        workflow_id = request.match_info["id"]
        if not route.resource.id_pattern.fullmatch(workflow_id):
            raise route.resource.not_found()
        body = parse_body(route.body, await read_json(request))
        # e.g. a configured token name too long to be an actor
        payload = build_model(lambda: route.build(body, principal), f"the {route.noun} cannot be recorded as given")

        found, _ = await find_for_tenant(client, route.resource, workflow_id, principal.tenant)
        request[REQUEST_ID] = workflow_id
        result = await send_update(request.app, route, found.handle, workflow_id, payload)
        if isinstance(result, BaseModel):
            return web.json_response(result.model_dump(mode="json"))
        return web.json_response(result)

    handle.__name__ = f"{route.update}_{route.resource.noun}"
    handle.__doc__ = f"Send the ``{route.update}`` update to a {route.resource.noun} of the caller's tenant."
    return handle
