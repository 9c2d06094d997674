"""The conformance kit on the SCIM connector, against the real ``scim2-server`` of ``test_scim``.

Two configurations: accounts deleted on erasure with restriction through the test extension
attribute, and accounts kept (deactivated) on erasure without restriction, where the kit
checks that restriction is refused.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest_asyncio

from connectors.conformance import ConnectorConformance
from connectors.contract import Connector, Subject
from tests.connectors.scim_server import RESTRICTED, TOKEN, Directory, scim_server

__all__ = ["scim_server"]  # the server fixture, used here too


class ScimKit(ConnectorConformance):
    connector_type = "scim"

    @pytest_asyncio.fixture
    async def seeded_subject(self, scim_server: SimpleNamespace) -> Subject:
        """A user with a (false) restriction flag, in a group with a colleague."""
        directory = Directory(scim_server.url, scim_server.token)
        email = f"jane-{uuid.uuid4().hex[:10]}@example.com"
        uid = await directory.user(email, restricted=False)
        await directory.group("staff", uid, await directory.user(f"colleague-{uuid.uuid4().hex[:10]}@example.com"))
        return Subject(request_id="conformance", identities={"email": email})

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        return Subject(request_id="conformance", identities={"email": "nobody@example.com"})

    async def observe(self, connector: Connector, subject: Subject) -> Any:
        """The kit's view without ``meta``, whose lastModified and version every write changes."""
        seen = await super().observe(connector, subject)
        for row in seen["exported"].get("users", ()):
            row.pop("meta", None)
        return seen


class TestScimConformance(ScimKit):
    @pytest_asyncio.fixture
    async def connector_options(self, scim_server: SimpleNamespace) -> dict[str, Any]:
        return {"base_url": scim_server.url, "token": TOKEN, "restriction_attribute": RESTRICTED, "page_size": 2}

    @pytest_asyncio.fixture
    async def bad_options(self, scim_server: SimpleNamespace) -> list[dict[str, Any]]:
        good = {"base_url": scim_server.url, "token": TOKEN}
        return [
            {"base_url": scim_server.url},
            {"base_url": scim_server.url, "token_env": "CONFORMANCE_UNSET_SCIM_TOKEN"},
            {**good, "token": "not-the-token"},
            {**good, "base_url": "idp.example.com/scim/v2"},
            {**good, "on_erase": "shred"},
            {**good, "page_size": 0},
            {**good, "restriction_attribute": "processingRestricted"},
            {**good, "restriction_attribute": RESTRICTED.replace("processingRestricted", "noSuchFlag")},
        ]


class TestScimDeactivatingConformance(ScimKit):
    @pytest_asyncio.fixture
    async def connector_options(self, scim_server: SimpleNamespace) -> dict[str, Any]:
        return {"base_url": scim_server.url, "token": TOKEN, "on_erase": "deactivate"}
