"""The conformance kit on the LDAP connector, against the real ``slapd`` of ``ldap_server``.

Two configurations, each on a fresh subtree per test: entries deleted on erasure with
restriction through ``employeeType``, and entries kept (locked through ppolicy's
``pwdAccountLockedTime``) on erasure without restriction, where the kit checks that
restriction is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_asyncio

from connectors.conformance import ConnectorConformance
from connectors.contract import Subject
from tests.connectors.ldap_server import ADMIN_DN, JANE, Slapd, Tree, seed_tree, shared_slapd


@pytest.fixture(scope="session")
def slapd() -> Slapd:
    """The session's slapd (installed when missing; the test skips when it cannot be)."""
    return shared_slapd()


@pytest.fixture
def tree(slapd: Slapd) -> Iterator[Tree]:
    """A fresh subtree: jane in groups staff and admins, each with a colleague."""
    tree = seed_tree(slapd)
    yield tree
    tree.conn.unbind()


class LdapKit(ConnectorConformance):
    connector_type = "ldap"

    @pytest_asyncio.fixture
    async def seeded_subject(self, tree: Tree) -> Subject:
        return Subject(request_id="conformance", identities={"email": JANE})

    @pytest_asyncio.fixture
    async def absent_subject(self, tree: Tree) -> Subject:
        return Subject(request_id="conformance", identities={"email": "nobody@example.com"})


class TestLdapConformance(LdapKit):
    @pytest_asyncio.fixture
    async def connector_options(self, tree: Tree) -> dict[str, Any]:
        return tree.options(restriction={"attribute": "employeeType", "value": "dsr-restricted {reference}"})

    @pytest_asyncio.fixture
    async def bad_options(self, tree: Tree) -> list[dict[str, Any]]:
        good = tree.options()
        return [
            {**good, "password": "not-the-password"},
            {**good, "base_dn": f"ou=nowhere,{tree.base}"},
            {**good, "group_base_dn": f"ou=nowhere,{tree.base}"},
            {k: v for k, v in good.items() if k != "password"} | {"password_env": "CONFORMANCE_UNSET_LDAP_PASSWORD"},
            {**good, "url": "ldap.example.com"},
            {**good, "bind_dn": "admin"},
            {**good, "export_attributes": ["cn", "userPassword"]},
            {**good, "user_filter": "(mail=*)"},
            {**good, "on_erase": "shred"},
            {**good, "disable": {"attribute": "userAccountControl"}},
            {"url": good["url"], "bind_dn": ADMIN_DN, "password": "x"},
        ]


class TestLdapDisablingConformance(LdapKit):
    @pytest_asyncio.fixture
    async def connector_options(self, tree: Tree) -> dict[str, Any]:
        return tree.options(on_erase="disable", disable={"attribute": "pwdAccountLockedTime",
                                                         "value": "000001010000Z"})
