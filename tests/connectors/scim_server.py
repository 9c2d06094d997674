"""A real SCIM server for the SCIM connector's tests: ``scim2-server`` (its CLI, with a bearer token).

The ``scim_server`` fixture starts it once per test module on a free loopback port, accepting
only ``TOKEN``, with the default schemas plus a test extension holding a boolean
``processingRestricted``, the custom attribute restriction writes. :class:`Directory` seeds
and reads it directly; ``make_scim`` builds and opens connectors on it. Test modules import
the fixtures they use (and name them in ``__all__``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import scim2_server
from scim2_models import Context, Email, Group, GroupMember, Name, User

from connectors.contract import Subject
from connectors.scim import ScimConnector
from tests.conftest import tool

TOKEN = "test-scim-token"
EXTENSION = "urn:example:params:scim:schemas:extension:dsr:2.0:User"
RESTRICTED = f"{EXTENSION}:processingRestricted"
SCIM_TYPE = "application/scim+json"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _schema_files(folder: Path) -> tuple[Path, Path]:
    """The default schemas and resource types of scim2-server, plus the test extension on User."""
    resources = Path(scim2_server.__file__).parent / "resources"
    schemas = json.loads((resources / "default-schemas.json").read_text())
    schemas.append({
        "id": EXTENSION, "name": "DsrUser", "description": "Restriction of processing (GDPR Art. 18)",
        "attributes": [{"name": "processingRestricted", "type": "boolean", "multiValued": False,
                        "description": "Processing is restricted", "required": False, "caseExact": False,
                        "mutability": "readWrite", "returned": "default", "uniqueness": "none"}],
    })
    types = json.loads((resources / "default-resource-types.json").read_text())
    types[0]["schemaExtensions"].append({"schema": EXTENSION, "required": False})
    (folder / "schemas.json").write_text(json.dumps(schemas))
    (folder / "resource-types.json").write_text(json.dumps(types))
    return folder / "schemas.json", folder / "resource-types.json"


@pytest.fixture(scope="module")
def scim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``scim2-server`` (the package's CLI) on a free loopback port, accepting only ``TOKEN``."""
    folder = tmp_path_factory.mktemp("scim")
    schemas, types = _schema_files(folder)
    port = free_port()
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(
        [tool("scim2-server"), "--hostname", "127.0.0.1", "--port", str(port), "--bearer-token", TOKEN,
         "--schema", str(schemas), "--resource-type", str(types)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"scim2-server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/v2", token=TOKEN)
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


class Directory:
    """Seeds and reads the SCIM server directly (models from scim2-models)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": SCIM_TYPE}

    async def _send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers=self.headers) as session, session.request(
            method, self.url + path, data=None if body is None else json.dumps(body)
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def user(self, email: str, user_name: str | None = None, restricted: bool | None = None,
                   **extra: Any) -> str:
        """Create a user; returns its id."""
        body = User(user_name=user_name or email, emails=[Email(value=email, primary=True)],
                    name=Name(given_name="Jane", family_name="Doe"), active=True, **extra,
                    ).model_dump(scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        if restricted is not None:
            body["schemas"].append(EXTENSION)
            body[EXTENSION] = {"processingRestricted": restricted}
        status, created = await self._send("POST", "/Users", body)
        assert status == 201, created
        return created["id"]

    async def group(self, name: str, *members: str) -> str:
        """Create a group holding ``members``; returns its id."""
        body = Group(display_name=name, members=[GroupMember(value=m) for m in members]
                     ).model_dump(scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        status, created = await self._send("POST", "/Groups", body)
        assert status == 201, created
        return created["id"]

    async def get(self, endpoint: str, rid: str) -> dict[str, Any] | None:
        status, body = await self._send("GET", f"/{endpoint}/{rid}")
        return body if status == 200 else None

    async def members(self, gid: str) -> list[str]:
        group = await self.get("Groups", gid)
        assert group is not None
        return [m["value"] for m in group.get("members") or ()]


@pytest.fixture
def directory(scim_server: SimpleNamespace) -> Directory:
    return Directory(scim_server.url, scim_server.token)


def unique_email(prefix: str = "jane", domain: str = "example.com") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@{domain}"


def subject(**identities: str) -> Subject:
    return Subject(request_id="req-scim", identities=identities)


def noop(_: Any) -> None:
    """A progress reporter that ignores progress."""


MakeScim = Callable[..., Awaitable[ScimConnector]]


@pytest.fixture
async def make_scim(scim_server: SimpleNamespace) -> AsyncIterator[MakeScim]:
    """Build and open SCIM connectors on the test server (options override the defaults)."""
    opened: list[ScimConnector] = []

    async def make(**options: Any) -> ScimConnector:
        connector = ScimConnector.from_options("directory", {"base_url": scim_server.url, "token": TOKEN, **options})
        await connector.open()
        opened.append(connector)
        return connector

    yield make
    for connector in opened:
        await connector.close()
