"""Fault injection: nothing is lost when the worker dies, Temporal restarts, or a connector's server goes away.

Bounded so that the suite stays short (each test well under two minutes); ``make soak`` runs the worker-kill
test longer (``DSR_SOAK_SECONDS``, ``DSR_SOAK_SUBJECTS``). Each test prints what it survived.

- The worker runs as its own process (``python -m workers.cli worker``) and is killed with SIGKILL at random
  moments while erasures run across every kind of system (Fides' example database, a SCIM directory, an LDAP
  directory, S3 backups and a signed-webhook partner), then started again. Every request gets as far as real
  time allows (all systems done, the backups beyond use and waiting for their expiry); exactly the subjects'
  rows, accounts and entries are erased; the partner knows each request once (idempotency keys); each
  erasure is recorded once; the audit chain verifies.
- The Temporal dev server is stopped mid-request and started again on the same SQLite file: the request
  completes.
- A connector's database goes away behind a TCP proxy: for a while (the request completes after it returns),
  and for good (that system ends in "needs attention", the other one completes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import boto3
import ldap3
import pytest
from temporalio.client import Client

from activities.audit import verify_chain
from tests.conftest import TEST_CODEC_KEY, tool
from tests.connectors.ldap_server import Tree, seed_tree, shared_slapd
from tests.connectors.scim_server import Directory, scim_server
from tests.connectors.webhook_partner import SECRET, WebhookPartner, running_webhook_partner
from tests.helpers import HASH_SECRET_ENV, fides_settings, new_request, running_worker
from workers.codec import data_converter
from workers.config import SystemSettings, TemporalSettings
from workflows.models import RequestKind, RequestStatus, Step, StepTimeouts, SystemState
from workflows.request import DataSubjectRequestWorkflow
from workflows.tasks import RetrySettings
from workflows.updates import Decision

__all__ = ["scim_server"]  # the fixture, used here

ROOT = Path(__file__).resolve().parent.parent
FAST = StepTimeouts(quick_seconds=5, bulk_heartbeat_seconds=5)
SOAK_SECONDS = float(os.environ.get("DSR_SOAK_SECONDS", "0"))
SUBJECTS = int(os.environ.get("DSR_SOAK_SUBJECTS", "6"))


@pytest.fixture(autouse=True)
def _hash_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_SECRET_ENV, "fault-secret")


async def seed_subjects(db_url: str, n: int, first_id: int = 200) -> list[tuple[int, str]]:
    """``n`` customers of their own (address and login rows too) in Fides' example; their ids and e-mails."""
    tag = uuid.uuid4().hex[:6]
    people = [(first_id + i, f"fault-{tag}-{i}@example.com") for i in range(n)]
    conn = await asyncpg.connect(db_url)
    try:
        for cid, email in people:
            await conn.execute("INSERT INTO address VALUES ($1::bigint, '1', 'Fault Road', 'Faultville', 'NY', "
                               "'10001')", cid)
            await conn.execute("INSERT INTO customer (id, email, name, created, address_id) "
                               "VALUES ($1::int, $2, $3, now(), $1::int)", cid, email, f"Fault Person {cid}")
            await conn.execute("INSERT INTO login (id, customer_id, time) VALUES ($1::int, $1::int, now())", cid)
    finally:
        await conn.close()
    return people


class WorkerProcess:
    """``dsr worker`` as a child process, configured through the environment."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], cwd=ROOT, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def worker_env(settings: Any, orchestrator_db: str, address: str) -> dict[str, str]:
    """The environment a ``dsr worker`` process reads its whole configuration from."""
    dump = settings.model_dump(mode="json", exclude_none=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_") or k.startswith("DSR_NOTIFY")}
    env.update({
        "DATABASE_URL": orchestrator_db,
        "DSR_CODEC_KEY": base64.b64encode(TEST_CODEC_KEY).decode(),
        "DSR_TEMPORAL__ADDRESS": address,
        "DSR_TEMPORAL__TASK_QUEUE": settings.temporal.task_queue,
        "DSR_STATE_DIR": str(settings.state_dir),
        "DSR_EXPORT__PATH": str(settings.export.path),
        "DSR_SYSTEMS": json.dumps(dump["systems"]),
        "DSR_TENANTS": json.dumps(dump["tenants"]),
        "DSR_CODEC__DATA_KEYS": "false",  # the test's client seals with the master key: the worker does too
        "DSR_LOG_FORMAT": "json",
        HASH_SECRET_ENV: os.environ[HASH_SECRET_ENV],
    })
    return env


EXPECTED = {"appdb": SystemState.DONE, "directory": SystemState.DONE, "ldap": SystemState.DONE,
            "mailer": SystemState.DONE, "backups": SystemState.AWAITING_EXPIRY}
"""Where an erasure across every system stands once it has done all it can in real time: the backups are
beyond use and wait (a durable timer, 35 days) for their expiry, which the time-skipping tests cover."""


class Subjects:
    """The subjects of one test, each present in every system: Fides' database, SCIM, LDAP (and the backups)."""

    def __init__(self, fides_db: str, directory: Directory, tree: Tree) -> None:
        self.fides_db, self.directory, self.tree = fides_db, directory, tree
        self.people: list[tuple[int, str]] = []
        self.scim_ids: dict[str, str] = {}
        self.scim_group_members: list[str] = []

    async def seed(self, n: int) -> list[tuple[int, str]]:
        """``n`` more subjects: customer rows (address and login too), a SCIM user, an LDAP entry in "staff"."""
        batch = await seed_subjects(self.fides_db, n, first_id=200 + len(self.people))
        for cid, email in batch:
            self.scim_ids[email] = await self.directory.user(email)
            self.tree.conn.add(self.tree.user(f"fault{cid}"), ["inetOrgPerson"],
                               {"uid": f"fault{cid}", "cn": f"Fault Person {cid}", "sn": "Person", "mail": email})
            self.tree.conn.modify(self.tree.group("staff"),
                                  {"member": [(ldap3.MODIFY_ADD, [self.tree.user(f"fault{cid}")])]})
        self.people += batch
        return batch


async def _settled(handle: Any) -> RequestStatus | None:
    """The request's status once every system is where it can get to; None before (or while the worker is down)."""
    try:
        status = await handle.query(DataSubjectRequestWorkflow.status, rpc_timeout=timedelta(seconds=5))
    except Exception:  # the worker is being killed or started: ask again later
        return None
    bad = [n for n, s in status.systems.items() if s.state in (SystemState.NEEDS_ATTENTION, SystemState.FAILED)]
    assert not bad and status.step not in (Step.FAILED, Step.NEEDS_ATTENTION), (status.step, bad)
    return status if {n: s.state for n, s in status.systems.items()} == EXPECTED else None


async def _all_settled(handles: list[Any]) -> list[RequestStatus]:
    pending: dict[int, Any] = dict(enumerate(handles))
    settled: dict[int, RequestStatus] = {}
    while pending:
        for i, handle in list(pending.items()):
            if (status := await _settled(handle)) is not None:
                settled[i] = status
                del pending[i]
        await asyncio.sleep(0.3)
    return [settled[i] for i in range(len(handles))]


async def _one_round(temporal_env: Any, worker: WorkerProcess, partner: WebhookPartner, queue: str,
                     people: list[tuple[int, str]], rng: random.Random, max_kills: int) -> list[Any]:
    """Erase ``people`` while killing the worker at random moments; the requests and their settled statuses.

    The first kill is certain, whatever the machine's speed: the partner holds its answers until the worker
    has been killed inside a call to it (the partner has the request; the worker never heard back), so the
    retry after the restart must reuse its idempotency key. The later kills come at random moments.
    """
    partner.gate, calls_before = asyncio.Event(), len(partner.received)
    requests = [new_request(RequestKind.ERASURE, email, approval=False, timeouts=FAST) for _, email in people]
    handles = [await temporal_env.client.start_workflow(DataSubjectRequestWorkflow.run, r, id=r.id, task_queue=queue)
               for r in requests]
    settled = asyncio.ensure_future(_all_settled(handles))
    end = time.monotonic() + 120
    while len(partner.received) == calls_before:
        assert time.monotonic() < end, "the partner was never called"
        await asyncio.sleep(0.05)
    await asyncio.sleep(rng.uniform(0.0, 0.5))  # more calls in flight, some systems erased
    worker.kill()
    worker.start()
    partner.gate.set()
    kills = 1
    while not settled.done() and kills < max_kills:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        if settled.done():
            break
        worker.kill()
        worker.start()
        kills += 1
    try:
        statuses: list[RequestStatus] = await asyncio.wait_for(settled, timeout=240)
    finally:
        for h in handles:  # the backups' 35-day wait is not this test's: end the requests here
            with contextlib.suppress(Exception):
                await h.terminate("fault-injection test over; the backups' expiry is tested with time skipping")
    return list(zip(requests, statuses, strict=True))


async def test_worker_killed_at_random_points_loses_nothing(temporal_env, fides_db, orchestrator_db, tmp_path,
                                                            scim_server, s3_endpoint):
    rng = random.Random(os.environ.get("DSR_FAULT_SEED", time.time_ns()))
    directory = Directory(scim_server.url, scim_server.token)
    tree = seed_tree(shared_slapd())
    subjects = Subjects(fides_db, directory, tree)
    colleague = await directory.user(f"colleague-{uuid.uuid4().hex[:8]}@example.com")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = "fault-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    for night in ("mon", "tue"):
        s3.put_object(Bucket=bucket, Key=f"nightly/{night}.dump", Body=b"dump")
    done: list[Any] = []
    async with running_webhook_partner(WebhookPartner(mode="completed")) as partner:
        queue = TemporalSettings(task_queue="fi-" + uuid.uuid4().hex[:8])
        settings = fides_settings(fides_db, tmp_path, temporal=queue)
        settings.systems["mailer"] = SystemSettings.model_validate({
            "type": "partner_webhook", "url": partner.url + "/dsr", "secret": SECRET,
            "callback_base": "http://127.0.0.1:9/v1/callbacks/webhook"})
        settings.systems["directory"] = SystemSettings(type="scim", base_url=scim_server.url,
                                                       token=scim_server.token)
        settings.systems["ldap"] = SystemSettings(type="ldap", **tree.options())
        settings.systems["backups"] = SystemSettings(type="s3_backups", bucket=bucket, prefix="nightly/",
                                                     endpoint_url=s3_endpoint, retention_days=35)
        address = temporal_env.client.service_client.config.target_host
        worker = WorkerProcess(worker_env(settings, orchestrator_db, address), tmp_path / "worker.log")
        worker.start()
        soak_until = time.monotonic() + SOAK_SECONDS
        try:
            while True:  # one round in the suite; rounds until DSR_SOAK_SECONDS under `make soak`
                batch = await subjects.seed(SUBJECTS)
                done += await _one_round(temporal_env, worker, partner, queue.task_queue, batch, rng,
                                         max_kills=1000 if SOAK_SECONDS else 5)
                if time.monotonic() >= soak_until:
                    break
        finally:
            worker.stop()
    people = subjects.people
    requests = [r for r, _ in done]
    statuses = [s for _, s in done]
    print(f"\nfault injection: {worker.kills} SIGKILLs of the worker survived, {len(statuses)} erasures across "
          f"{len(EXPECTED)} systems settled, nothing lost")
    assert worker.kills >= 1
    assert len(statuses) == len(people)

    # Postgres: exactly the subjects' rows are erased; Fides' own customers are untouched.
    conn = await asyncpg.connect(fides_db)
    try:
        rows = {r["id"]: r for r in await conn.fetch("SELECT id, email, name FROM customer")}
        logins = await conn.fetchval("SELECT count(*) FROM login WHERE customer_id = ANY($1::int[])",
                                     [cid for cid, _ in people])
    finally:
        await conn.close()
    for cid, email in people:
        assert rows[cid]["email"] != email and rows[cid]["name"] == "REDACTED"
    assert logins == 0
    assert rows[1]["email"] == "customer-1@example.com" and rows[3]["email"] == "jane@example.com"
    # SCIM: every subject's account is gone; a colleague's stays.
    for _, email in people:
        assert await directory.get("Users", subjects.scim_ids[email]) is None
    assert await directory.get("Users", colleague) is not None
    # LDAP: every subject's entry is gone and out of the group; the others stay.
    for cid, _ in people:
        assert tree.entry(tree.user(f"fault{cid}")) is None
    members = tree.members("staff")
    assert not [m for m in members if m.startswith("uid=fault")]
    assert tree.user("jane") in members and tree.user("john") in members
    # S3: the backups are beyond use, each erasure recorded once in the ledger.
    for night in ("mon", "tue"):
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(
            Bucket=bucket, Key=f"nightly/{night}.dump")["TagSet"]}
        assert tags["dsr-beyond-use"] == "true"
    # The partner was asked once per request: one idempotency key each (a retried call reuses its key).
    assert sorted(partner.by_key) == sorted(f"{r.id}:mailer" for r in requests)
    # The evidence trail survived the kills, unbroken, with one erasure record per request and system.
    conn = await asyncpg.connect(orchestrator_db)
    try:
        report = await verify_chain(conn)
        erased = await conn.fetch("SELECT request_id, system, count(*) AS n FROM dsr_audit WHERE event = 'erased' "
                                  "AND request_id = ANY($1::text[]) GROUP BY 1, 2", [r.id for r in requests])
        ledger = await conn.fetchval("SELECT count(DISTINCT request_id) FROM dsr_erasure_ledger "
                                     "WHERE request_id = ANY($1::text[])", [r.id for r in requests])
    finally:
        await conn.close()
    assert report.ok, [b.line() for b in report.breaks]
    assert sorted((r["request_id"], r["system"], r["n"]) for r in erased) == sorted(
        (r.id, system, 1) for r in requests for system in EXPECTED)
    assert ledger == len(requests)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_dev_server(db_file: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [tool("temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
             "--http-port", str(_free_port()), "--metrics-port", str(_free_port()), "--db-filename", str(db_file),
             "--log-level", "warn", "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def _connect(port: int) -> Client:
    from workers.codec import AesGcmCodec

    for _ in range(200):
        try:
            return await Client.connect(f"127.0.0.1:{port}",
                                        data_converter=data_converter(AesGcmCodec([TEST_CODEC_KEY])))
        except RuntimeError:
            await asyncio.sleep(0.1)
    raise AssertionError("the dev server never answered")


async def _wait_step(handle: Any, *steps: Step, timeout: float = 60) -> RequestStatus:
    end = time.monotonic() + timeout
    while True:
        try:
            status = await handle.query(DataSubjectRequestWorkflow.status)
            if status.step in steps:
                return status
        except Exception:  # the server is coming back
            pass
        if time.monotonic() > end:
            raise AssertionError(f"never reached {steps}")
        await asyncio.sleep(0.2)


async def test_temporal_restarts_mid_request(fides_db, orchestrator_db, tmp_path):
    port, db_file = _free_port(), tmp_path / "temporal.db"
    server = _start_dev_server(db_file, port, tmp_path / "temporal.log")
    try:
        client = await _connect(port)
        settings = fides_settings(fides_db, tmp_path)
        async with running_worker(settings, client, orchestrator_db) as queue:
            req = new_request(RequestKind.ERASURE, "jane@example.com", timeouts=FAST)
            handle = await client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id, task_queue=queue)
            await _wait_step(handle, Step.AWAITING_APPROVAL)
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            server = _start_dev_server(db_file, port, tmp_path / "temporal.log")
            await _connect(port)  # it answers again, on the same SQLite file
            await _wait_step(handle, Step.AWAITING_APPROVAL)  # the request is still there, where it was
            await handle.execute_update(DataSubjectRequestWorkflow.decide, Decision(actor="admin", outcome="approve"))
            status = await asyncio.wait_for(handle.result(), timeout=120)
        print("\nfault injection: Temporal dev server killed and restarted mid-request; the request completed")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    assert status.step == Step.COMPLETED and status.systems["appdb"].state == SystemState.DONE


class Proxy:
    """A TCP proxy to the embedded PostgreSQL's Unix socket, that the test can take down and bring back."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._conns):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.close()
            return
        self._conns |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns -= {writer, up_writer}


@asynccontextmanager
async def proxied(pg: Any, database: str) -> AsyncIterator[tuple[Proxy, str]]:
    proxy = Proxy(f"{pg.socket_dir}/.s.PGSQL.{pg.port}")
    await proxy.up()
    try:
        yield proxy, f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"
    finally:
        await proxy.down()


async def test_a_connector_down_for_a_while_then_for_good(temporal_env, pg, fides_db, orchestrator_db, tmp_path):
    database = urlsplit(fides_db).path.lstrip("/")
    async with (
        proxied(pg, database) as (proxy, dsn),
        running_webhook_partner(WebhookPartner(mode="completed")) as partner,
    ):
        settings = fides_settings(dsn, tmp_path)
        settings.systems["appdb"].retry = RetrySettings(maximum_attempts=6, initial_interval_seconds=0.5,
                                                        maximum_interval_seconds=2)
        settings.systems["mailer"] = SystemSettings.model_validate({
            "type": "partner_webhook", "url": partner.url + "/dsr", "secret": SECRET,
            "callback_base": "http://127.0.0.1:9/v1/callbacks/webhook"})
        async with running_worker(settings, temporal_env.client, orchestrator_db) as queue:
            # Down for a while: the system's retries carry it over the gap.
            await proxy.down()
            req = new_request(RequestKind.ACCESS, "jane@example.com", approval=False, timeouts=FAST)
            handle = await temporal_env.client.start_workflow(DataSubjectRequestWorkflow.run, req, id=req.id,
                                                              task_queue=queue)
            await asyncio.sleep(3)
            assert (await handle.query(DataSubjectRequestWorkflow.status)).step != Step.COMPLETED
            await proxy.up()
            status = await asyncio.wait_for(handle.result(), timeout=60)
            assert status.step == Step.COMPLETED
            assert status.systems["appdb"].found["customer"] == 1

            # Down for good: that system needs attention, the partner is done all the same.
            await proxy.down()
            req2 = new_request(RequestKind.ERASURE, "customer-2@example.com", approval=False, timeouts=FAST)
            handle2 = await temporal_env.client.start_workflow(DataSubjectRequestWorkflow.run, req2, id=req2.id,
                                                               task_queue=queue)
            status2 = await _wait_step(handle2, Step.NEEDS_ATTENTION, timeout=60)
    print("\nfault injection: a database down for 3 s was waited out; down for good, it needs attention")
    assert status2.systems["appdb"].state == SystemState.NEEDS_ATTENTION and status2.systems["appdb"].error
    assert status2.systems["mailer"].state == SystemState.DONE
