"""The SCIM connector's rights and options against a real ``scim2-server`` (see ``scim_server``):
locate, export, erasure and its verification, deactivation, restriction, and configuration.

How it talks to a server (pagination, rate limits, error bodies, a provider that ignores
filters) is tested in ``test_scim_http`` against small aiohttp servers.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.contract import Capability, ConfigurationError, ConnectorError, UnsupportedError
from connectors.registry import build_connector
from connectors.scim import ScimConnector
from connectors.testing import MemoryPlanStore, MemorySink
from tests.connectors.scim_server import (
    EXTENSION,
    RESTRICTED,
    TOKEN,
    Directory,
    MakeScim,
    directory,
    make_scim,
    noop,
    scim_server,
    subject,
    unique_email,
)

__all__ = ["directory", "make_scim", "scim_server"]  # fixtures of scim_server, used here


# ---- locate and export --------------------------------------------------------------------


async def test_finds_the_user_by_email_and_by_user_name(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email, user_name=f"u-{uuid.uuid4().hex[:8]}")
    user_name = (await directory.get("Users", uid))["userName"]
    await directory.group("staff", uid)
    await directory.group("admins", uid, await directory.user(unique_email("colleague")))
    connector = await make_scim()
    assert connector.capabilities == {Capability.LOCATE, Capability.EXPORT, Capability.ERASE, Capability.DEACTIVATE}

    assert (await connector.locate(subject(email=email))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(email=email.upper()))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(user_id=user_name))).found == {"users": 1, "groups": 2}
    # Both identities lead to one account: counted once.
    assert (await connector.locate(subject(email=email, user_id=user_name))).found == {"users": 1, "groups": 2}
    assert (await connector.locate(subject(email=unique_email("nobody")))).found == {}
    # An identity the options do not map is not searched.
    assert (await connector.locate(subject(phone="+49 30 1234"))).found == {}


async def test_an_extension_attribute_can_be_an_identity(make_scim: MakeScim, directory: Directory) -> None:
    employee = f"E-{uuid.uuid4().hex[:8]}"
    await directory.user(unique_email())
    uid = await directory.user(unique_email())
    status, _ = await directory._send("PATCH", f"/Users/{uid}", {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:"
                        "employeeNumber", "value": employee}]})
    assert status in (200, 204)
    connector = await make_scim(identities={
        "employee_id": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"})
    assert (await connector.locate(subject(employee_id=employee))).found == {"users": 1}


async def test_exports_the_user_resource_and_its_memberships(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email, title="Engineer")
    colleague = await directory.user(unique_email("colleague"))
    gid = await directory.group("admins", uid, colleague)
    connector = await make_scim()
    sink = MemorySink()
    outcome = await connector.export(subject(email=email), sink)
    assert outcome.exported == {"users": 1, "groups": 1} == sink.counts

    row = sink.rows["users"][0]
    # Core attributes in RFC 7643 order, as the server returned them; no schemas, no password.
    assert sink.fields["users"] == ["id", "meta", "userName", "name", "title", "active", "emails"]
    assert row["id"] == uid and row["emails"] == [{"value": email, "primary": True}]
    assert row["name"] == {"givenName": "Jane", "familyName": "Doe"} and row["title"] == "Engineer"
    assert row["meta"]["resourceType"] == "User"
    # The membership, and nothing of the group's other members.
    assert sink.rows["groups"] == [{"id": gid, "displayName": "admins", "externalId": None, "member": uid}]
    assert colleague not in json.dumps(sink.rows)

    empty = MemorySink()
    assert (await connector.export(subject(email=unique_email("nobody")), empty)).exported == {}
    assert empty.rows == {}


# ---- erasure, deactivation, restriction ---------------------------------------------------


async def test_erase_deletes_the_user_and_its_memberships(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email)
    colleague = await directory.user(unique_email("colleague"))
    staff, admins = await directory.group("staff", uid), await directory.group("admins", uid, colleague)
    connector = await make_scim()
    plan = MemoryPlanStore()
    progress: list[Any] = []

    outcome = await connector.erase(subject(email=email), plan, progress.append)
    assert outcome.deleted == {"groups": 2, "users": 1} and outcome.retained == []
    assert progress[0] == {"planned": 3} and progress[-1] == {"applied": 3}
    assert await directory.get("Users", uid) is None
    assert await directory.members(staff) == [] and await directory.members(admins) == [colleague]
    assert await directory.get("Users", colleague) is not None
    assert (await connector.verify_erasure(subject(email=email), plan)).ok

    # A re-run knows what was done from the plan: same counts, 404s taken as done.
    again = await connector.erase(subject(email=email), plan, noop)
    assert again.deleted == outcome.deleted and again.batches == 0
    plan.forget_done()
    assert (await connector.erase(subject(email=email), plan, noop)).deleted == outcome.deleted
    assert (await connector.verify_erasure(subject(email=email), plan)).ok


async def test_verification_reports_an_account_the_erasure_missed(
    make_scim: MakeScim, directory: Directory
) -> None:
    email = unique_email()
    await directory.user(email)
    connector = await make_scim()
    plan = MemoryPlanStore()
    await connector.erase(subject(email=email), plan, noop)
    await directory.user(email, user_name=f"again-{uuid.uuid4().hex[:6]}")  # created again meanwhile
    assert (await connector.verify_erasure(subject(email=email), plan)).remaining == {"users": 1}


async def test_erase_deactivates_when_the_tenant_keeps_accounts(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email)
    gid = await directory.group("staff", uid)
    connector = await make_scim(on_erase="deactivate", retention_ground="Tenant policy 4.2: accounts kept")
    plan = MemoryPlanStore()

    outcome = await connector.erase(subject(email=email), plan, noop)
    assert outcome.deleted == {} and outcome.masked == {}
    assert {(r.collection, r.count, r.ground) for r in outcome.retained} == {
        ("users", 1, "Tenant policy 4.2: accounts kept"), ("groups", 1, "Tenant policy 4.2: accounts kept")}
    user = await directory.get("Users", uid)
    assert user is not None and user["active"] is False and user["emails"][0]["value"] == email
    assert await directory.members(gid) == [uid]

    verification = await connector.verify_erasure(subject(email=email), plan)
    assert verification.ok and {(r.collection, r.count) for r in verification.retained} == {("users", 1),
                                                                                            ("groups", 1)}
    # Reactivated behind our back: verification says so.
    await directory._send("PATCH", f"/Users/{uid}", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                                      "Operations": [{"op": "replace", "path": "active",
                                                                      "value": True}]})
    assert (await connector.verify_erasure(subject(email=email), plan)).remaining == {"users": 1}


async def test_deactivate_sets_active_false_and_keeps_everything(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    uid = await directory.user(email)
    gid = await directory.group("staff", uid)
    connector = await make_scim()
    outcome = await connector.deactivate(subject(email=email))
    assert outcome.changed == {"users": 1} and outcome.fields == ["users.active"]
    user = await directory.get("Users", uid)
    assert user is not None and user["active"] is False
    assert await directory.members(gid) == [uid]
    assert (await connector.deactivate(subject(email=email))).changed == {"users": 1}
    assert (await connector.deactivate(subject(email=unique_email("nobody")))).changed == {}


async def test_restriction_sets_and_clears_the_extension_attribute(
    make_scim: MakeScim, directory: Directory
) -> None:
    email = unique_email()
    uid = await directory.user(email)
    connector = await make_scim(restriction_attribute=RESTRICTED)
    assert Capability.RESTRICT in connector.capabilities

    restricted = await connector.restrict(subject(email=email), "dispute-1")
    assert restricted.changed == {"users": 1} and restricted.fields == [f"users.{RESTRICTED}"]
    assert (await directory.get("Users", uid))[EXTENSION] == {"processingRestricted": True}
    lifted = await connector.lift_restriction(subject(email=email), "dispute-1")
    assert lifted.changed == {"users": 1}
    assert (await directory.get("Users", uid))[EXTENSION] == {"processingRestricted": False}
    assert (await connector.lift_restriction(subject(email=email), "dispute-1")).changed == {}


async def test_restriction_needs_the_option(make_scim: MakeScim, directory: Directory) -> None:
    email = unique_email()
    await directory.user(email)
    connector = await make_scim()
    assert Capability.RESTRICT not in connector.capabilities
    with pytest.raises(UnsupportedError):
        await connector.restrict(subject(email=email), "dispute-1")
    with pytest.raises(UnsupportedError):
        await connector.lift_restriction(subject(email=email), "dispute-1")


@pytest.mark.parametrize(("attribute", "message"), [
    (f"{EXTENSION}:noSuchFlag", f"schema {EXTENSION} has no attribute noSuchFlag"),
    ("urn:example:params:scim:schemas:extension:other:2.0:User:flag", "the server's /Schemas does not list"),
    ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "is string, not a single boolean"),
])
async def test_the_restriction_attribute_is_checked_at_open(
    scim_server: SimpleNamespace, attribute: str, message: str
) -> None:
    connector = ScimConnector.from_options("directory", {"base_url": scim_server.url, "token": TOKEN,
                                                         "restriction_attribute": attribute})
    with pytest.raises(ConfigurationError) as info:
        await connector.open()
    text = str(info.value)
    assert text.startswith("directory: restriction_attribute: ") and message in text and "\n" not in text


# ---- configuration ------------------------------------------------------------------------


async def test_a_wrong_token_is_a_configuration_error(scim_server: SimpleNamespace) -> None:
    connector = ScimConnector.from_options("directory", {"base_url": scim_server.url, "token": "wrong"})
    with pytest.raises(ConfigurationError) as info:
        await connector.open()
    assert str(info.value) == "directory: check the token failed: the server refused the bearer token (SCIM error 401)"
    assert "wrong" not in str(info.value)


async def test_the_token_comes_from_the_environment(
    scim_server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, directory: Directory
) -> None:
    email = unique_email()
    await directory.user(email)
    monkeypatch.setenv("DIRECTORY_SCIM_TOKEN", TOKEN)
    connector = build_connector("directory", "scim", {"base_url": scim_server.url, "token_env": "DIRECTORY_SCIM_TOKEN"})
    assert isinstance(connector, ScimConnector)
    await connector.open()
    try:
        assert (await connector.locate(subject(email=email))).found == {"users": 1}
    finally:
        await connector.close()


def test_a_missing_token_environment_variable_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIRECTORY_SCIM_TOKEN", raising=False)
    with pytest.raises(ConfigurationError) as info:
        build_connector("directory", "scim", {"base_url": "https://idp.example.com/scim/v2",
                                              "token_env": "DIRECTORY_SCIM_TOKEN"})
    assert str(info.value) == "systems.directory: environment variable DIRECTORY_SCIM_TOKEN (token_env) is not set"


GOOD = {"base_url": "https://idp.example.com/scim/v2", "token": "t"}


@pytest.mark.parametrize(("options", "message"), [
    ({"token": "t"}, "base_url: Field required"),
    ({**GOOD, "base_url": "ftp://idp.example.com"}, "base_url: Value error, must be an http:// or https:// URL"),
    ({"base_url": GOOD["base_url"]}, "set exactly one of token_env (production) or token (tests)"),
    ({**GOOD, "token_env": "X"}, "set exactly one of token_env (production) or token (tests)"),
    ({**GOOD, "on_erase": "shred"}, "on_erase: Input should be 'delete' or 'deactivate'"),
    ({**GOOD, "page_size": 0}, "page_size: Input should be greater than or equal to 1"),
    ({**GOOD, "identities": {}}, "identities: Value error, map at least one identity type"),
    ({**GOOD, "identities": {"email": "emails value"}}, "email: 'emails value' is not a SCIM attribute path"),
    ({**GOOD, "restriction_attribute": "processingRestricted"}, "restriction_attribute: Value error, must be an "
                                                                "extension attribute path"),
    ({**GOOD, "page_sise": 10}, "page_sise: Extra inputs are not permitted"),
])
def test_bad_options_are_one_clear_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ScimConnector.from_options("directory", options)
    text = str(info.value)
    assert text.startswith("systems.directory: ") and message in text and "\n" not in text


def test_the_registry_finds_the_connector() -> None:
    connector = build_connector("directory", "scim", GOOD)
    assert type(connector) is ScimConnector and connector.name == "directory"


async def test_calls_before_open_fail_clearly() -> None:
    connector = ScimConnector.from_options("directory", GOOD)
    with pytest.raises(ConnectorError) as info:
        await connector.locate(subject(email="jane@example.com"))
    assert str(info.value) == "directory: call open() first" and info.value.retryable is False
