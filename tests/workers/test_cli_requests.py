"""The ``dsr`` CLI against the real API: the README's walkthrough, its exit codes and its one-line errors.

The API is served on a real loopback port with the real worker on the tests' Temporal dev server and
Fides' example database as the only system; each command runs the installed ``dsr`` script in a
subprocess, as an operator's shell would, with the token in ``DSR_API_TOKEN``.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.workers.cli_support import EMAIL, PORTAL, Cli, assert_one_line_error, cli, wait_for_step

__all__ = ["cli"]  # the fixture


async def test_walkthrough_create_show_decide_wait(cli):
    key = f"cli-{uuid.uuid4()}"
    run = await cli("request", "create", "access", "--email", EMAIL, "--idempotency-key", key, "--json",
                    token=PORTAL)
    assert run.code == 0, run.err
    request_id = run.json()["id"]
    assert run.json()["kind"] == "access" and run.json()["tenant"] == "acme"
    again = await cli("request", "create", "access", "--email", EMAIL, "--idempotency-key", key, "--json",
                      token=PORTAL)
    assert again.code == 0 and again.json()["id"] == request_id  # the same key: the same request

    await wait_for_step(cli, request_id, "awaiting_approval")
    run = await cli("request", "show", request_id)
    assert run.code == 0, run.err
    assert request_id in run.out and "awaiting_approval" in run.out and "days left" in run.out

    run = await cli("decide", request_id, "approve", "--reason", "identity checked by support", "--wait")
    assert run.code == 0, (run.out, run.err)
    # The progress display went to stderr, one line per step; the result to stdout.
    steps = [line.split()[-1] for line in run.err.strip().splitlines()]
    assert steps[-1] == "completed" and len(steps) == len(set(steps)), run.err
    assert "completed" in run.out and "appdb" in run.out and "postgres" in run.out
    assert EMAIL not in run.out + run.err


async def test_exit_codes_for_rejection_bad_input_and_refusals(cli):
    run = await cli("request", "create", "erasure", "--user-id", "3", "--json", token=PORTAL)
    assert run.code == 0, run.err
    request_id = run.json()["id"]
    await wait_for_step(cli, request_id, "awaiting_approval")

    # Bad input the CLI sees itself: argparse's usage error, a rejection without reason, a missing token.
    assert (await cli("decide", request_id, "maybe")).code == 2
    assert "reason" in assert_one_line_error(await cli("decide", request_id, "reject"), 2)
    assert "DSR_API_TOKEN" in assert_one_line_error(await cli("request", "show", request_id, token=None), 2)
    assert "JSON" in assert_one_line_error(await cli("request", "create", "rectification", "--email", EMAIL,
                                                     "--corrections", "{not json", token=PORTAL), 2)
    # Input the API refuses (4xx problems): its title and detail on one line, exit 2.
    line = assert_one_line_error(await cli("request", "create", "rectification", "--email", EMAIL, token=PORTAL), 2)
    assert "Invalid" in line or "details" in line
    assert "Forbidden" in assert_one_line_error(await cli("decide", request_id, "approve", token=PORTAL), 2)
    assert "Unauthorized" in assert_one_line_error(await cli("request", "show", request_id, token="wrong"), 2)
    assert_one_line_error(await cli("request", "show", "req_doesnotexist00000000000000"), 2)
    # An API that does not answer: exit 1.
    dead = Cli("http://127.0.0.1:9")
    assert "cannot reach" in assert_one_line_error(await dead("request", "show", request_id), 1)

    # Extend once, then reject: with --wait the request ends rejected, exit 1.
    run = await cli("extend", request_id, "--months", "1", "--reason", "complex request", "--json")
    assert run.code == 0, run.err
    assert run.json()["extension"]["months"] == 1
    assert (await cli("extend", request_id, "--months", "1", "--reason", "again")).code == 2  # only once
    run = await cli("decide", request_id, "reject", "--reason", "not the account holder", "--wait", "--json")
    assert run.code == 1, (run.out, run.err)
    assert run.json()["step"] == "rejected"
    assert run.json()["decision"]["reason"] == "not the account holder"


async def test_cancel_and_wait_timeout(cli):
    run = await cli("request", "create", "export", "--user-id", "3", "--json", token=PORTAL)
    request_id = run.json()["id"]
    await wait_for_step(cli, request_id, "awaiting_approval")
    run = await cli("request", "show", request_id, "--wait", "--timeout", "1")
    assert run.code == 1 and "Traceback" not in run.err
    progress, why = run.err.strip().splitlines()  # the progress line, then why it gave up
    assert progress.endswith(f"{request_id}  awaiting_approval")
    assert why == "dsr: the request is still awaiting_approval after 1s"
    run = await cli("request", "cancel", request_id, "--reason", "subject withdrew", token=PORTAL)
    assert run.code == 0, run.err
    assert "cancelled" in run.out
    run = await cli("request", "show", request_id, "--wait", "--json")
    assert run.code == 1 and run.json()["step"] == "cancelled"


async def test_dispute_open_show_resolve(cli):
    run = await cli("dispute", "open", "--email", EMAIL, "--grounds", "contests accuracy", "--json")
    assert run.code == 0, run.err
    dispute_id = run.json()["id"]
    assert dispute_id.startswith("dsp_")
    run = await cli("dispute", "show", dispute_id)
    assert run.code == 0 and dispute_id in run.out
    for _ in range(100):
        step = (await cli("dispute", "show", dispute_id, "--json")).json()["step"]
        if step == "restricted":
            break
        await asyncio.sleep(0.1)
    run = await cli("dispute", "resolve", dispute_id, "company_prevails", "--reason", "data verified accurate",
                    "--json")
    assert run.code == 0, run.err
    assert run.json()["resolution"]["outcome"] == "company_prevails"
    assert (await cli("dispute", "resolve", dispute_id, "nobody")).code == 2


async def test_list_filters_and_pages(cli):
    ids = []
    for kind in ("access", "export"):
        run = await cli("request", "create", kind, "--user-id", "3", "--json", token=PORTAL)
        ids.append(run.json()["id"])
    for request_id in ids:
        await wait_for_step(cli, request_id, "awaiting_approval")
    listed: dict = {}
    for _ in range(50):  # visibility is eventually consistent
        run = await cli("request", "list", "--status", "awaiting_approval", "--page-size", "2", "--all", "--json")
        assert run.code == 0, run.err
        listed = {r["id"]: r for r in run.json()["requests"]}
        if all(i in listed for i in ids):
            break
        await asyncio.sleep(0.2)
    assert all(i in listed for i in ids), run.out
    assert {listed[i]["kind"] for i in ids} == {"access", "export"}
    assert all(r["step"] == "awaiting_approval" and r["tenant"] == "acme" for r in listed.values())
    assert run.json()["next_page_token"] is None

    run = await cli("request", "list", "--kind", "export", "--status", "awaiting_approval", "--page-size", "200")
    assert run.code == 0, run.err
    assert run.out.split()[:6] == ["ID", "TENANT", "KIND", "STEP", "DUE", "RECEIVED"]
    assert ids[1] in run.out and ids[0] not in run.out

    run = await cli("request", "list", "--page-size", "1")
    assert run.code == 0 and "more: --page-token " in run.out
    assert_one_line_error(await cli("request", "list", "--page-size", "0"), 2)
    assert_one_line_error(await cli("request", "list", "--tenant", "globex"), 2)  # another tenant: 403
    assert (await cli("request", "list", "--status", "sleeping")).code == 2
