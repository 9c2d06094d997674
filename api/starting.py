"""Starting a workflow exactly once per ``Idempotency-Key``: shared by requests and disputes.

With a key, the workflow id is an HMAC of the tenant and the key, so a retried call finds
the workflow it started before; Temporal refuses a second start under the same id
(``REJECT_DUPLICATE``), and the memo (encrypted by the codec) tells whether the retry
carried the same content, through HMAC fingerprints only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.common import (
    CLIENT,
    REQUEST_ID,
    SETTINGS,
    Resource,
    current_status,
    describe,
    idempotency_conflict,
    idempotency_reused,
    json_response,
)

ID_DRAWS = 3

log = structlog.get_logger()


async def start_once(
    request: web.Request,
    resource: Resource[Any],
    *,
    key: str | None,
    keyed_id: Callable[[str], str],
    random_id: Callable[[], str],
    build_input: Callable[[str], BaseModel],
    memo: dict[str, Any],
    same_content: Callable[[dict[str, Any]], bool],
    initial: Callable[[str], BaseModel],
    location: Callable[[str], str],
    search_attributes: TypedSearchAttributes | None = None,
) -> web.Response:
    """Start ``resource``'s workflow and answer 201 with its initial status, or replay an earlier start.

    Args:
        request: The HTTP request (its app holds the client and settings).
        resource: What is started.
        key: The ``Idempotency-Key``, if one was sent.
        keyed_id: The workflow id for a key.
        random_id: A fresh random workflow id.
        build_input: The workflow input for a workflow id (may raise a 422 problem).
        memo: The memo to start with (tenant, fingerprints, what the initial status needs).
        same_content: Whether an existing workflow's memo shows the same content as this call.
        initial: The status to answer for a workflow just started.
        location: The resource's path for a workflow id.
        search_attributes: What visibility lists the workflow by (no personal data; workflows/search.py).

    Returns:
        201 for a new workflow; 200 with the current status when ``key`` was seen before with the
        same content.

    Raises:
        Problem: 422 when ``key`` was seen with other content; 409 when its workflow cannot be read.
    """
    client = request.app[CLIENT]
    task_queue = request.app[SETTINGS].temporal.task_queue
    workflow_id = keyed_id(key) if key else random_id()
    for _draw in range(ID_DRAWS):
        workflow_input = build_input(workflow_id)
        request[REQUEST_ID] = workflow_id
        try:
            await client.start_workflow(
                resource.workflow_type,
                workflow_input,
                id=workflow_id,
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                memo=memo,
                search_attributes=search_attributes,
            )
        except RPCError as exc:
            if search_attributes is None or exc.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            # The search attributes are not registered on this server (workers/temporal_process.py registers
            # them): start without, so that the request is taken; it is then missing from listings.
            log.warning("api.search_attributes_refused", workflow_type=resource.workflow_type)
            search_attributes = None
            continue
        except WorkflowAlreadyStartedError:
            if key:
                return await _replay(request, resource, workflow_id, same_content, location)
            workflow_id = random_id()  # a random id collided: vanishingly rare, draw again
            continue
        return json_response(initial(workflow_id), status=201, headers={"Location": location(workflow_id)})
    raise RuntimeError(f"could not draw an unused {resource.noun} id")


async def _replay(
    request: web.Request,
    resource: Resource[Any],
    workflow_id: str,
    same_content: Callable[[dict[str, Any]], bool],
    location: Callable[[str], str],
) -> web.Response:
    client = request.app[CLIENT]
    found = await describe(client, resource, workflow_id)
    if found is None:
        # Started moments ago and already gone (retention), or not this kind of workflow: do not guess.
        raise idempotency_conflict()
    if not same_content(found.memo):
        raise idempotency_reused()
    status = await current_status(client, resource, found)
    return json_response(status, status=200, headers={"Location": location(workflow_id)})
