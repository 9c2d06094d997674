"""The LDAP connector against a real OpenLDAP ``slapd`` (see ``ldap_server``), one fresh subtree per test."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import ldap3
import pytest

import connectors.ldap as ldap_module
from connectors.contract import Capability, ConfigurationError, ConnectorError, Subject, UnsupportedError
from connectors.ldap import LdapConnector
from connectors.registry import build_connector
from connectors.testing import MemoryPlanStore, MemorySink
from tests.connectors.ldap_server import ADMIN_DN, JANE, JANE_PASSWORD, Slapd, Tree, free_port, seed_tree, shared_slapd

MARK = "dsr: account disabled"
LOCK = {"attribute": "pwdAccountLockedTime", "value": "000001010000Z"}

MakeConnector = Callable[..., Awaitable[LdapConnector]]


def subject(email: str | None = None, user_id: str | None = None) -> Subject:
    """A subject known by an email address and/or a user id."""
    identities = {k: v for k, v in (("email", email), ("user_id", user_id)) if v is not None}
    return Subject(request_id="req-ldap", identities=identities)


def noop(_: Any) -> None:
    """A progress reporter that ignores progress."""


@pytest.fixture(scope="session")
def slapd() -> Slapd:
    """The session's slapd (installed when missing; the test skips when it cannot be)."""
    return shared_slapd()


@pytest.fixture
def tree(slapd: Slapd) -> Iterator[Tree]:
    """A fresh subtree: people jane, john, janet; groups staff, admins, ops (member) and unix, backup (memberUid)."""
    tree = seed_tree(slapd)
    yield tree
    tree.conn.unbind()


@pytest.fixture
async def make(tree: Tree) -> AsyncIterator[MakeConnector]:
    """Build and open connectors on the test's subtree."""
    opened: list[LdapConnector] = []

    async def build(**options: Any) -> LdapConnector:
        connector = LdapConnector.from_options("directory", tree.options(**options))
        await connector.open()
        opened.append(connector)
        return connector

    yield build
    for connector in opened:
        await connector.close()


async def test_locate_finds_jane_by_mail_and_no_one_else(make: MakeConnector) -> None:
    connector = await make()
    assert (await connector.locate(subject(JANE))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject("JANE@Example.COM"))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject("john@example.com"))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject("nobody@example.com"))).found == {}


async def test_user_id_is_looked_up_by_uid(make: MakeConnector) -> None:
    connector = await make()
    assert (await connector.locate(subject(user_id="jane"))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(JANE, user_id="jane"))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(user_id="nobody"))).found == {}
    by_cn = await make(uid_attribute="cn")
    assert (await by_cn.locate(subject(user_id="Janet Poe"))).found == {"users": 1, "groups": 1}


@pytest.mark.parametrize("email", ["*", "*@example.com", "jan*", "*)(mail=*", "jane@example.com)(|(uid=*",
                                   "x)(objectClass=*))(|(mail=x", "\\2a", "jane@example.com\\"])
async def test_filter_injection_finds_nothing(make: MakeConnector, email: str) -> None:
    connector = await make()
    assert (await connector.locate(subject(email, user_id=email))).found == {}
    sink = MemorySink()
    assert (await connector.export(subject(email), sink)).exported == {}


async def test_export_has_attributes_and_groups_but_no_password(make: MakeConnector, tree: Tree) -> None:
    connector = await make()
    sink = MemorySink()
    outcome = await connector.export(subject(JANE), sink)
    assert outcome.exported == {"users": 1, "groups": 2}
    assert sink.fields["users"] == ["dn", "cn", "sn", "givenName", "mail", "uid", "telephoneNumber", "title",
                                    "description"]
    (jane,) = sink.rows["users"]
    assert jane == {"dn": tree.user("jane"), "cn": "Jane Doe", "sn": "Doe", "givenName": "Jane", "mail": JANE,
                    "uid": "jane", "telephoneNumber": "+49 30 1234567", "title": "Engineer",
                    "description": "Likes LDAP"}
    assert sorted(r["group_cn"] for r in sink.rows["groups"]) == ["admins", "staff"]
    assert {r["group_dn"] for r in sink.rows["groups"]} == {tree.group("staff"), tree.group("admins")}
    assert JANE_PASSWORD not in repr(sink.rows) and "userPassword" not in repr(sink.rows)

    sink = MemorySink()
    await (await make(export_attributes=["cn", "mail"], group_member_attribute="memberUid")).export(
        subject(JANE), sink)
    assert sink.rows["users"] == [{"dn": tree.user("jane"), "cn": "Jane Doe", "mail": JANE}]
    assert [r["group_cn"] for r in sink.rows["groups"]] == ["unix"]


async def test_erase_deletes_the_entry_after_taking_it_out_of_groups(make: MakeConnector, tree: Tree) -> None:
    connector = await make()
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(JANE), plan, noop)
    assert outcome.deleted == {"groups": 2, "users": 1} and outcome.retained == []
    assert [i.collection for i in plan.all_items] == ["groups", "groups", "users"]
    assert tree.entry(tree.user("jane")) is None
    assert tree.members("staff") == [tree.user("john")]
    assert tree.members("admins") == [tree.user("janet")]
    assert tree.entry(tree.user("john")) is not None and tree.entry(tree.user("janet")) is not None
    assert tree.members("unix") == ["jane", "john"]  # memberUid groups are not the configured kind
    verification = await connector.verify_erasure(subject(JANE), plan)
    assert verification.ok and verification.remaining == {}

    again = await connector.erase(subject(JANE), plan, noop)
    assert again.deleted == outcome.deleted and again.batches == 0
    plan.forget_done()
    assert (await connector.erase(subject(JANE), plan, noop)).deleted == outcome.deleted
    fresh = MemoryPlanStore()
    assert (await connector.erase(subject(JANE), fresh, noop)).deleted == {}
    assert (await connector.verify_erasure(subject(JANE), fresh)).ok
    assert tree.members("staff") == [tree.user("john")]


async def test_erase_with_member_uid_groups(make: MakeConnector, tree: Tree) -> None:
    connector = await make(group_member_attribute="memberUid")
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(JANE), plan, noop)
    assert outcome.deleted == {"groups": 1, "users": 1}
    assert tree.members("unix") == ["john"]
    assert tree.members("backup") == ["janet"]
    assert (await connector.verify_erasure(subject(JANE), plan)).ok


async def test_erase_disable_keeps_the_entry_disabled_and_out_of_groups(make: MakeConnector, tree: Tree) -> None:
    connector = await make(on_erase="disable")
    plan = MemoryPlanStore()
    outcome = await connector.erase(subject(JANE), plan, noop)
    assert outcome.deleted == {"groups": 2}
    assert [(r.collection, r.count) for r in outcome.retained] == [("users", 1)]
    jane = tree.entry(tree.user("jane"))
    assert jane is not None and sorted(jane["description"]) == sorted(["Likes LDAP", MARK])
    assert tree.members("staff") == [tree.user("john")] and tree.members("admins") == [tree.user("janet")]
    verification = await connector.verify_erasure(subject(JANE), plan)
    assert verification.remaining == {} and [(r.collection, r.count) for r in verification.retained] == [("users", 1)]
    assert (await connector.locate(subject(JANE))).found == {"users": 1}

    again = await connector.erase(subject(JANE), MemoryPlanStore(), noop)
    assert again.deleted == {} and [r.count for r in again.retained] == [1]
    assert tree.entry(tree.user("jane"), "description")["description"].count(MARK) == 1


async def test_verify_reports_what_is_left(make: MakeConnector, tree: Tree) -> None:
    connector = await make(on_erase="disable")
    plan = MemoryPlanStore()
    await connector.erase(subject(JANE), plan, noop)
    tree.conn.modify(tree.user("jane"), {"description": [(ldap3.MODIFY_DELETE, [MARK])]})
    tree.conn.modify(tree.group("ops"), {"member": [(ldap3.MODIFY_ADD, [tree.user("jane")])]})
    assert (await connector.verify_erasure(subject(JANE), plan)).remaining == {"users": 1, "groups": 1}
    deleting = await make()
    assert (await deleting.verify_erasure(subject(JANE), plan)).remaining == {"users": 1, "groups": 1}


async def test_deactivate_disables_and_deletes_nothing(make: MakeConnector, tree: Tree) -> None:
    connector = await make()
    outcome = await connector.deactivate(subject(JANE))
    assert outcome.changed == {"users": 1} and outcome.fields == ["users.description"]
    assert sorted(tree.entry(tree.user("jane"))["description"]) == sorted(["Likes LDAP", MARK])
    assert tree.members("staff") == sorted([tree.user("jane"), tree.user("john")])
    assert (await connector.deactivate(subject(JANE))).changed == {"users": 1}
    assert tree.entry(tree.user("jane"), "description")["description"].count(MARK) == 1
    assert (await connector.locate(subject(JANE))).found == {"users": 1, "groups": 2}
    assert (await connector.deactivate(subject("nobody@example.com"))).changed == {}


async def test_ppolicy_lock_stops_binds(make: MakeConnector, tree: Tree) -> None:
    assert tree.bind_as("jane", JANE_PASSWORD)
    connector = await make(disable=LOCK)
    await connector.deactivate(subject(JANE))
    assert tree.entry(tree.user("jane"), "pwdAccountLockedTime") == {"pwdAccountLockedTime": ["000001010000Z"]}
    assert not tree.bind_as("jane", JANE_PASSWORD)
    assert tree.bind_as("john", "john-password")
    await connector.deactivate(subject(JANE))  # already locked: harmless


async def test_flag_disabling_sets_bits_and_keeps_the_others(make: MakeConnector, tree: Tree) -> None:
    """The Active Directory way (userAccountControl bit 2), on the integer attribute shadowFlag."""
    tree.conn.modify(tree.user("jane"), {"shadowFlag": [(ldap3.MODIFY_REPLACE, ["5"])]})
    connector = await make(disable={"attribute": "shadowFlag", "flag": 2}, on_erase="disable")
    await connector.deactivate(subject(JANE))
    await connector.deactivate(subject("john@example.com"))
    assert tree.entry(tree.user("jane"), "shadowFlag") == {"shadowFlag": ["7"]}
    assert tree.entry(tree.user("john"), "shadowFlag") == {"shadowFlag": ["2"]}
    plan = MemoryPlanStore()
    await connector.erase(subject(JANE), plan, noop)
    assert tree.entry(tree.user("jane"), "shadowFlag") == {"shadowFlag": ["7"]}
    assert (await connector.verify_erasure(subject(JANE), plan)).ok


async def test_restriction_is_per_reference(make: MakeConnector, tree: Tree) -> None:
    plain = await make()
    assert Capability.RESTRICT not in plain.capabilities
    with pytest.raises(UnsupportedError):
        await plain.restrict(subject(JANE), "dispute-1")
    connector = await make(restriction={"attribute": "employeeType", "value": "restricted {reference}"})
    assert Capability.RESTRICT in connector.capabilities
    assert (await connector.restrict(subject(JANE), "dispute-1")).changed == {"users": 1}
    await connector.restrict(subject(JANE), "dispute-1")
    await connector.restrict(subject(JANE), "dispute-2")
    assert sorted(tree.entry(tree.user("jane"), "employeeType")["employeeType"]) == [
        "restricted dispute-1", "restricted dispute-2"]
    lifted = await connector.lift_restriction(subject(JANE), "dispute-1")
    assert lifted.changed == {"users": 1} and lifted.fields == ["users.employeeType"]
    assert tree.entry(tree.user("jane"), "employeeType") == {"employeeType": ["restricted dispute-2"]}
    assert (await connector.lift_restriction(subject(JANE), "dispute-1")).changed == {}
    await connector.lift_restriction(subject(JANE), "dispute-2")
    assert tree.entry(tree.user("jane"), "employeeType") == {"employeeType": []}


async def test_the_last_member_of_a_group(make: MakeConnector, tree: Tree) -> None:
    tree.conn.add(tree.group("solo"), ["groupOfNames"], {"cn": "solo", "member": [tree.user("jane")]})
    connector = await make()
    with pytest.raises(ConnectorError) as info:
        await connector.erase(subject(JANE), MemoryPlanStore(), noop)
    message = str(info.value)
    assert info.value.retryable is False and "empty_group_member" in message and tree.group("solo") in message
    assert "jane" not in message.replace(tree.group("solo"), "")
    placeholder = f"cn=nobody,{tree.base}"
    connector = await make(empty_group_member=placeholder)
    plan = MemoryPlanStore()
    await connector.erase(subject(JANE), plan, noop)
    assert tree.members("solo") == [placeholder]
    assert (await connector.verify_erasure(subject(JANE), plan)).ok


async def test_bad_credentials_and_base_dn_are_configuration_errors(tree: Tree) -> None:
    wrong = LdapConnector.from_options("directory", tree.options(password="wrong"))
    with pytest.raises(ConfigurationError, match="invalidCredentials") as info:
        await wrong.open()
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigurationError):
        await wrong.locate(subject(JANE))
    not_a_dn = LdapConnector.from_options("directory", tree.options(bind_dn="admin"))
    with pytest.raises(ConfigurationError, match="refused bind_dn"):
        await not_a_dn.open()
    missing = LdapConnector.from_options("directory", tree.options(base_dn=f"ou=nowhere,{tree.base}"))
    with pytest.raises(ConfigurationError, match="base_dn ou=nowhere"):
        await missing.open()
    with pytest.raises(ConfigurationError, match="base_dn ou=nowhere"):
        await missing.locate(subject(JANE))
    groups = LdapConnector.from_options("directory", tree.options(group_base_dn=f"ou=nowhere,{tree.base}"))
    with pytest.raises(ConfigurationError, match="group_base_dn"):
        await groups.open()


async def test_server_down_is_retryable() -> None:
    connector = LdapConnector.from_options("directory", {
        "url": f"ldap://127.0.0.1:{free_port()}", "bind_dn": ADMIN_DN, "password": "x",
        "base_dn": "dc=example,dc=com", "timeout": 2})
    for call in (connector.open(), connector.locate(subject(JANE))):
        with pytest.raises(ConnectorError) as info:
            await call
        assert info.value.retryable is True and not isinstance(info.value, ConfigurationError)
        assert "cannot reach" in str(info.value) and JANE not in str(info.value)


def _options(**overrides: Any) -> dict[str, Any]:
    base = {"url": "ldap://127.0.0.1:389", "bind_dn": ADMIN_DN, "password": "x", "base_dn": "dc=example,dc=com"}
    return {k: v for k, v in {**base, **overrides}.items() if v is not None}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"url": "http://host"}, "url"),
    ({"url": "ldap://"}, "url"),
    ({"base_dn": "not a dn"}, "base_dn"),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ({"password": None}, "password_env"),
    ({"password_env": "DSR_TEST_LDAP_PW"}, "exactly one"),
    ({"password": None, "password_env": "DSR_TEST_UNSET_LDAP_PW"}, "DSR_TEST_UNSET_LDAP_PW"),
    ({"export_attributes": ["cn", "userPassword"]}, "credentials"),
    ({"user_filter": "(mail=x)"}, "{email}"),
    ({"user_filter": "(&(mail={email})"}, "user_filter"),
    ({"user_id_filter": "(uid={email})"}, "{user_id}"),
    ({"on_erase": "shred"}, "on_erase"),
    ({"disable": {"attribute": "userAccountControl", "flag": 2, "value": "514"}}, "exactly one"),
    ({"restriction": {"attribute": "employeeType"}}, "restriction.value"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_options_are_one_line(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        LdapConnector.from_options("directory", _options(**overrides))
    text = str(info.value)
    assert text.startswith("directory: ") and "\n" not in text and message in text


def test_the_documented_example_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    doc = ldap_module.__doc__ or ""
    example = doc[doc.index("[systems.directory]"):].split("\n\n")[0]
    options = tomllib.loads(example)["systems"]["directory"]
    assert options.pop("type") == "ldap"
    monkeypatch.setenv("DIRECTORY_PASSWORD", "secret")
    (tmp_path / "ca.pem").write_text("")
    connector = LdapConnector.from_options("directory", {**options, "ca_file": str(tmp_path / "ca.pem")})
    assert Capability.RESTRICT in connector.capabilities


def test_registry_builds_it_with_capabilities_from_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSR_TEST_LDAP_PW", "secret")
    connector = build_connector("dir", "ldap", _options(password=None, password_env="DSR_TEST_LDAP_PW"))
    assert isinstance(connector, LdapConnector) and connector.type_name == "ldap"
    assert connector.capabilities == {Capability.LOCATE, Capability.EXPORT, Capability.ERASE, Capability.DEACTIVATE}
    assert connector.config.secret() == "secret" and "secret" not in repr(connector.config)
