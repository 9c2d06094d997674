"""Observability against real components: metrics after a real request, tracing spans, request ids in JSON logs.

The Temporal dev server, embedded PostgreSQL with Fides' example, the real worker (``run_worker`` with its
metrics port) and the real API app. Counters are process-wide, so every check compares before and after.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import socket
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from api.app import create_app
from tests.helpers import HASH_SECRET_ENV, api_settings, fides_settings, new_request, running_worker
from workers.config import ApiToken, MetricsSettings, TemporalSettings
from workers.logs import configure_logging
from workers.metrics import OTHER, LabelPolicy, due_bucket, refresh_open_requests, temporal_runtime
from workers.tracing import client_interceptors, tracing_interceptor
from workers.worker import run_worker
from workflows.models import RequestKind, Step
from workflows.request import DataSubjectRequestWorkflow

TENANT = "metrics" + uuid.uuid4().hex[:6]
PORTAL = "portal-token-" + uuid.uuid4().hex
ADMIN = "admin-token-" + uuid.uuid4().hex
EMAIL = "jane@example.com"
Sample = tuple[str, frozenset[tuple[str, str]]]


def _token(name: str, secret: str, role: str) -> ApiToken:
    return ApiToken(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), role=role, tenant=TENANT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(text: str) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _key(name: str, **labels: str) -> Sample:
    return (name, frozenset(labels.items()))


def _delta(before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str) -> float:
    key = _key(name, **labels)
    return after.get(key, 0.0) - before.get(key, 0.0)


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return await resp.text()


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "metrics-secret")


async def test_a_real_request_shows_in_the_worker_and_api_metrics(temporal_env, fides_db, orchestrator_db, tmp_path):
    port = _free_port()
    settings = fides_settings(
        fides_db, tmp_path,
        temporal=TemporalSettings(task_queue="metrics-" + uuid.uuid4().hex[:8]),
        api=api_settings([_token("portal", PORTAL, "portal"), _token("admin-acme", ADMIN, "admin")]),
        metrics=MetricsSettings(worker_port=port, deadline_refresh_seconds=1),
    )
    settings.tenants[TENANT] = settings.tenants["acme"]  # a tenant of its own: no other test's request shares a series
    logs = io.StringIO()
    configure_logging(json_output=True, stream=logs, force=True)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, temporal_env.client, stop, database_url=orchestrator_db))
    try:
        async with TestClient(TestServer(create_app(settings, temporal_env.client))) as api:
            for _ in range(100):  # the worker's metrics port opens with the worker
                try:
                    before = _samples(await _scrape(port))
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            api_before = _samples(await (await api.get("/metrics")).text())

            resp = await api.post("/v1/requests", json={"kind": "access", "identities": {"email": EMAIL}},
                                  headers={"Authorization": f"Bearer {PORTAL}", "Idempotency-Key": uuid.uuid4().hex})
            assert resp.status == 201, await resp.text()
            rid = (await resp.json())["id"]
            status = await _wait(api, rid, {"awaiting_approval"})

            # Open and waiting: the worker counts it by days to its deadline, from visibility, every second.
            due_in = due_bucket((datetime.fromisoformat(status["due_at"]) - datetime.now(UTC)).total_seconds() / 86400)
            open_key = _key("dsr_open_requests", tenant=TENANT, kind="access", due_in=due_in)
            for _ in range(100):
                open_before = _samples(await _scrape(port)).get(open_key, 0)
                if open_before == 1:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the open request was not counted")

            resp = await api.post(f"/v1/requests/{rid}/decision", json={"outcome": "approve", "reason": "ok"},
                                  headers={"Authorization": f"Bearer {ADMIN}"})
            assert resp.status == 200, await resp.text()
            final = await _wait(api, rid, {"completed", "failed", "needs_attention"})
            assert final["step"] == "completed", final
            # The step reads "completed" a moment before the final audit event is recorded.
            finished = _key("dsr_requests_finished_total", tenant=TENANT, kind="access", outcome="completed")
            for _ in range(100):
                worker_text = await _scrape(port)
                if _samples(worker_text).get(finished, 0) > before.get(finished, 0):
                    break
                await asyncio.sleep(0.05)
            api_text = await (await api.get("/metrics")).text()
            # Closed: no longer counted as open (a series with no request left is removed). Visibility is
            # eventually consistent: refresh here too (a failing refresh then fails the test with its error).
            for _ in range(300):
                await refresh_open_requests(temporal_env.client, LabelPolicy(settings))
                if _samples(await _scrape(port)).get(open_key, 0) == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the closed request is still counted as open")
    finally:
        stop.set()
        await worker
        configure_logging(force=True)
    after, api_after = _samples(worker_text), _samples(api_text)

    assert _delta(before, after, "dsr_requests_started_total", tenant=TENANT, kind="access") == 1
    assert _delta(before, after, "dsr_requests_finished_total", tenant=TENANT, kind="access",
                  outcome="completed") == 1
    assert _delta(before, after, "dsr_request_completion_seconds_count", kind="access", outcome="completed") == 1
    # Every per-system audit record of the request is one step in the metrics, with its system and outcome.
    conn = await asyncpg.connect(orchestrator_db)
    try:
        rows = await conn.fetch("SELECT system, event, outcome FROM dsr_audit WHERE request_id = $1 "
                                "AND system IS NOT NULL", rid)
    finally:
        await conn.close()
    steps = Counter((r["system"], r["event"], r["outcome"]) for r in rows)
    assert ("appdb", "exported", "ok") in steps, steps
    for (system, step, outcome), n in steps.items():
        assert _delta(before, after, "dsr_system_steps_total", tenant=TENANT, system=system, step=step,
                      outcome=outcome) == n

    # The API's calls, by route template (never the path) and status.
    assert _delta(api_before, api_after, "dsr_api_requests_total", method="POST", route="/v1/requests",
                  status="201") == 1
    assert _delta(api_before, api_after, "dsr_api_requests_total", method="POST",
                  route="/v1/requests/{id}/decision", status="200") == 1
    assert _delta(api_before, api_after, "dsr_api_requests_total", method="GET", route="/v1/requests/{id}",
                  status="200") >= 2
    # The SDK-independent process metrics come along (prometheus_client's default collectors).
    assert any(name == "process_resident_memory_bytes" for name, _ in after)

    # Nothing in either exposition names the subject or the request.
    for text in (worker_text, api_text):
        assert EMAIL not in text and "%40" not in text
        assert rid not in text and rid.removeprefix("req_") not in text
        assert not re.search(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", text)

    # JSON logs: the activities' events carry the opaque request id (bound for the whole activity), as does
    # the API's access log; no line carries the email.
    events = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    mine = [e for e in events if e.get("request_id") == rid]
    assert any(e.get("event") == "dsr_event" and e.get("activity") == "dsr.record_event" for e in mine), mine[:5]
    assert any(e.get("event") == "api.request" and e.get("route") == "/v1/requests/{id}/decision" for e in mine)
    assert all(e.get("workflow_id") for e in mine if "activity" in e)
    assert EMAIL not in logs.getvalue()


async def _wait(api: TestClient, rid: str, steps: set[str]) -> dict:
    for _ in range(600):
        resp = await api.get(f"/v1/requests/{rid}", headers={"Authorization": f"Bearer {ADMIN}"})
        body = await resp.json()
        if body["step"] in steps:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"request still at {body['step']}")


async def test_tracing_spans_cover_the_workflow_and_its_activities(temporal_env, fides_db, orchestrator_db,
                                                                   tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = Client(**{**temporal_env.client.config(),
                       "interceptors": [tracing_interceptor(provider.get_tracer("test"))]})
    settings = fides_settings(fides_db, tmp_path)
    async with running_worker(settings, client, orchestrator_db) as queue:
        req = new_request(RequestKind.ACCESS, approval=False)
        result = await client.execute_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue,
                                               execution_timeout=timedelta(minutes=2))
    assert result.step == Step.COMPLETED, result.outcome_reason

    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    assert "StartWorkflow:DataSubjectRequestWorkflow" in names
    assert "RunWorkflow:DataSubjectRequestWorkflow" in names
    for act in ("dsr.locate", "dsr.export", "dsr.record_event"):
        assert f"StartActivity:{act}" in names and f"RunActivity:{act}" in names, sorted(names)
    # One trace: the client's start is the root of the workflow's and the activities' spans.
    start = next(s for s in spans if s.name == "StartWorkflow:DataSubjectRequestWorkflow")
    run_activities = [s for s in spans if s.name.startswith("RunActivity:")]
    assert run_activities and all(s.context.trace_id == start.context.trace_id for s in run_activities)
    # Spans name the workflow by its opaque id, never the subject.
    for s in spans:
        assert EMAIL not in json.dumps({k: str(v) for k, v in (s.attributes or {}).items()})


def test_tracing_is_off_without_an_endpoint(tmp_path):
    assert client_interceptors(fides_settings("postgresql://unused", tmp_path)) == []


def test_labels_take_only_configured_names_and_code_words(tmp_path):
    labels = LabelPolicy(fides_settings("postgresql://unused", tmp_path))
    assert labels.tenant("acme") == "acme" and labels.tenant("jane@example.com") == OTHER
    assert labels.system("appdb") == "appdb" and labels.system("req_0123abcd") == OTHER
    assert labels.kind("erasure") == "erasure" and labels.kind("anything") == OTHER
    assert labels.word("erase_failed") == "erase_failed"
    assert labels.word("req_0f3a9c") == OTHER and labels.word("a@b.example") == OTHER
    assert [due_bucket(d) for d in (-1, 0, 6.9, 7, 13, 20, 31)] == [
        "overdue", "0-7d", "0-7d", "7-14d", "7-14d", "14-30d", "30d+"]


async def test_the_temporal_sdk_exports_its_own_metrics(temporal_env, tmp_path):
    port = _free_port()
    settings = fides_settings("postgresql://unused", tmp_path, metrics=MetricsSettings(temporal_port=port))
    runtime = temporal_runtime(settings)
    assert runtime is not None and temporal_runtime(settings) is runtime  # one per address per process
    config = temporal_env.client.config()
    client = await Client.connect(temporal_env.client.service_client.config.target_host,
                                  namespace=config["namespace"], runtime=runtime)
    await client.count_workflows()
    for _ in range(50):
        text = await _scrape(port)
        if "temporal_request_total" in text:
            break
        await asyncio.sleep(0.1)
    assert "temporal_request_total" in text, text[:500]
    assert temporal_runtime(fides_settings("postgresql://unused", tmp_path)) is None
    # Another address on a port already taken (here by the runtime above): the default runtime, not a crash.
    busy = fides_settings("postgresql://unused", tmp_path, metrics=MetricsSettings(host="0.0.0.0", temporal_port=port))
    assert temporal_runtime(busy) is None


async def test_api_metrics_route_counts_templates_and_can_be_turned_off(temporal_env, tmp_path):
    on = fides_settings("postgresql://unused", tmp_path, api=api_settings([]))
    async with TestClient(TestServer(create_app(on, temporal_env.client))) as api:
        await api.get("/v1/no-such/jane@example.com")  # no route (401 before 404): "unmatched", not its path
        await api.get("/v1/requests/req_0123456789abcdef")  # a 401: counted by its template
        resp = await api.get("/metrics")
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
    samples = _samples(text)
    assert samples[_key("dsr_api_requests_total", method="GET", route="unmatched", status="401")] >= 1
    assert samples[_key("dsr_api_requests_total", method="GET", route="/v1/requests/{id}", status="401")] >= 1
    assert "jane" not in text and "0123456789abcdef" not in text

    off = on.model_copy(update={"metrics": MetricsSettings(api_route=False)})
    async with TestClient(TestServer(create_app(off, temporal_env.client))) as api:
        assert (await api.get("/metrics")).status == 404
