"""Schemathesis fuzzes the running API against its own ``/openapi.json``: no 5xx, and every answer as documented.

The API listens on a real port on 127.0.0.1 (aiohttp's TestServer) over the tests' Temporal dev server, with
the live task queue (a real worker runs the real workflows) and a real, empty orchestrator database (for the
audit route). Schemathesis (4.x) draws cases per operation, valid ones and invalid ones, sends them with a
token of a role the operation allows (picked per case), and checks each answer: not a server error, a
documented status, content type and headers, and a body that fits the documented schema. Some cases use the
ids of a real request and a real dispute, so that updates and queries reach real workflows.

Bounded: a few examples per operation and mode, no shrinking, and a total budget checked before each call.
Schemathesis speaks ``requests`` (blocking), so it runs in a thread while the server, the worker and the
Temporal client go on in the test's event loop.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.testing import WorkflowEnvironment

from api.openapi import OPENAPI_PATH, build_document
from tests.api.support import api_client, assert_problem, auth, body, dispute_body, key
from workers.config import Settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
MAX_EXAMPLES = 10
"""Per operation and generation mode (valid, invalid), plus as many again with real ids where a path has one."""
BUDGET_SECONDS = 70.0
"""For every call together; a run that would go beyond stops and fails, naming what it did not reach."""
CALL_TIMEOUT_SECONDS = 30
ATTEMPTS = 2
AST_RACE = "AST constructor recursion depth mismatch"
"""A CPython 3.11 race (gh-106905): Hypothesis parsing a lambda's source in the fuzzing thread while the event
loop's thread compiles code (e.g. evaluating annotations) may raise this SystemError; the operation is fuzzed again."""
ROLE_TOKENS = {"portal": "portal-acme", "admin": "admin-acme", "privacy_officer": "officer", "auditor": "auditor"}


class OutOfTime(Exception):
    """The fuzzing budget is spent."""


def warm_up() -> None:
    """Build every operation's strategies once in the main thread, before the fuzzing thread starts.

    Schemathesis and Hypothesis import modules lazily; an import in the fuzzing thread parses source (pytest's
    assertion rewriting, the Temporal sandbox's import hook) while the loop's thread may compile too, which is
    where CPython 3.11's AST race (gh-106905) struck. After this, the thread imports nothing new.
    """
    schema = schemathesis.openapi.from_dict(build_document())
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            operation.as_strategy(mode)


def fuzz(base_url: str, real_ids: dict[str, str]) -> tuple[list[str], list[str], int]:
    """Fuzz every documented operation; the failures, the operations not reached in time, and the calls made."""
    doc = build_document()
    schema = schemathesis.openapi.from_url(base_url + OPENAPI_PATH)
    deadline = time.monotonic() + BUDGET_SECONDS
    session = requests.Session()
    failures: list[str] = []
    not_reached: list[str] = []
    calls = 0

    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        roles = doc["paths"][operation.path][operation.method.lower()]["x-roles"]
        tokens: list[str | None] = [ROLE_TOKENS[role] for role in roles] or [None]
        strategies = [operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        if "{id}" in operation.path:
            real = real_ids["dispute" if operation.path.startswith("/v1/disputes") else "request"]
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"id": real}))

        @hypothesis.settings(
            max_examples=MAX_EXAMPLES * len(strategies),
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @given(case=st.one_of(strategies), token=st.sampled_from(tokens))
        def run(case: Any, token: str | None) -> None:
            nonlocal calls
            if time.monotonic() > deadline:
                raise OutOfTime
            calls += 1
            case.call_and_validate(base_url=base_url, session=session, headers=auth(token) if token else None,
                                   checks=CHECKS, timeout=CALL_TIMEOUT_SECONDS)

        for attempt in range(1, ATTEMPTS + 1):
            try:
                run()
            except OutOfTime:
                not_reached.append(name)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is an exception group
                text = "".join(traceback.format_exception(exc))
                if AST_RACE in text and attempt < ATTEMPTS:
                    continue
                failures.append(f"{name}: {type(exc).__name__}: {exc}\n{text[-4000:]}")
            break
    return failures, not_reached, calls


async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    live_settings: Settings, temporal_env: WorkflowEnvironment, orchestrator_db: str
) -> None:
    settings = live_settings.model_copy(update={"database_url": orchestrator_db})
    async with api_client(settings, temporal_env.client) as tc:
        resp = await tc.post("/v1/requests", json=body("erasure"), headers={**auth("portal-acme"),
                                                                             "Idempotency-Key": key()})
        assert resp.status == 201, await resp.text()
        request_id = (await resp.json())["id"]
        resp = await tc.post("/v1/disputes", json=dispute_body(), headers=auth("admin-acme"))
        assert resp.status == 201, await resp.text()
        dispute_id = (await resp.json())["id"]

        warm_up()
        base_url = str(tc.server.make_url("")).rstrip("/")
        assert base_url.startswith("http://127.0.0.1:")
        started = time.monotonic()
        failures, not_reached, calls = await asyncio.to_thread(
            fuzz, base_url, {"request": request_id, "dispute": dispute_id})
        elapsed = time.monotonic() - started

    assert not failures, "\n\n".join(failures)
    assert not not_reached, f"the budget ran out before {not_reached} ({calls} calls in {elapsed:.0f} s)"
    assert calls >= 100, calls  # every operation was exercised, not skipped
    assert elapsed < 90, elapsed


@pytest.mark.parametrize("query", [
    {"expires": "²", "signature": "0" * 64},  # str.isdigit() says yes, int() says no
    {"expires": "9" * 5000, "signature": "0" * 64},  # more digits than int() converts
    {"expires": "4102444800", "signature": "é" * 64},  # hmac.compare_digest refuses non-ASCII str
])
async def test_what_the_fuzzer_found_malformed_export_links_are_404_not_500(idle_api: TestClient,
                                                                            query: dict[str, str]) -> None:
    resp = await idle_api.get("/v1/exports/req_aaaaaaaaaaaaaaaaaaaaaaaaaa", params=query)
    await assert_problem(resp, 404)
