"""Every kind of request: its details, the tenant's policy it carries, its subject key, its approval gate."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from api.app import server_secret
from tests.api.support import (
    ACME_POLICY,
    EMAIL,
    assert_problem,
    auth,
    body,
    expected_id,
    key,
    started_input,
    workflow_exists,
)
from workflows.models import MARKETING, DsrRequest, RequestKind, RequestPolicy

VALID = [
    pytest.param("access", {}, id="access"),
    pytest.param("export", {}, id="export"),
    pytest.param("erasure", {}, id="erasure"),
    pytest.param("rectification", {"corrections": {"user.name": "Jane Roe"}}, id="rectification"),
    pytest.param("restriction", {"grounds": "I contest the accuracy of my address"}, id="restriction"),
    pytest.param("objection", {"purpose": "profiling", "grounds": "my particular situation"}, id="objection"),
    pytest.param("opt_out", {}, id="opt-out"),
    pytest.param("opt_out", {"purpose": "marketing"}, id="opt-out-marketing"),
    pytest.param("consent_withdrawal", {"purpose": "newsletter"}, id="consent-withdrawal"),
    pytest.param("deactivation", {}, id="deactivation"),
]


def expected_subject_key(secret: bytes, tenant: str, primary: str) -> str:
    """The subject key by its documented formula, computed independently of the API's code."""
    mac = hmac.new(secret, f"subject\0{tenant}\0{primary}".encode(), hashlib.sha256).digest()
    return base64.b32encode(mac).decode().lower().rstrip("=")[:32]


@pytest.mark.parametrize(("kind", "details"), VALID)
async def test_every_kind_starts_with_its_details_and_the_tenants_policy(idle_api, idle_settings, temporal_env,
                                                                         kind, details):
    resp = await idle_api.post("/v1/requests", json=body(kind=kind, details=details), headers=auth("portal-acme"))
    assert resp.status == 201, await resp.text()
    request_id = (await resp.json())["id"]
    assert (await resp.json())["kind"] == kind
    request = await started_input(temporal_env.client, request_id, DsrRequest)
    assert request.kind == kind
    assert request.details.model_dump(exclude_defaults=True) == details
    assert request.policy == RequestPolicy(
        organisation_managed=False, objection_window_days=5, reminder_every_days=2, escalate_days_before_due=4,
        lift_notice_days=ACME_POLICY.dispute_notice_days,
    )
    assert request.verification_timeout_days == ACME_POLICY.verification_timeout_days == 10
    assert request.identity_verified is True
    assert request.subject_key == expected_subject_key(server_secret(idle_settings), "acme", EMAIL)


INVALID = [
    pytest.param("rectification", {}, "corrections", id="rectification-without-corrections"),
    pytest.param("objection", {}, "purpose", id="objection-without-purpose"),
    pytest.param("consent_withdrawal", {"grounds": "x"}, "purpose", id="withdrawal-without-purpose"),
    pytest.param("opt_out", {"purpose": "profiling"}, "marketing", id="opt-out-not-marketing"),
]


@pytest.mark.parametrize(("kind", "details", "named"), INVALID)
async def test_details_that_do_not_fit_the_kind_are_422_and_start_nothing(idle_api, temporal_env, kind, details,
                                                                          named):
    k = key()
    resp = await idle_api.post("/v1/requests", json=body(kind=kind, details=details),
                               headers={**auth("portal-acme"), "Idempotency-Key": k})
    doc = await assert_problem(resp, 422)
    assert named in doc["detail"]
    assert "profiling" not in doc["detail"] and "jane" not in await resp.text()
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))


BAD_DETAILS = [
    pytest.param({"color": "blue"}, ["details", "color"], id="extra-field"),
    pytest.param({"corrections": {"name": "Jane Roe"}}, ["details", "corrections"], id="correction-not-a-category"),
    pytest.param({"corrections": {"user.name": "x" * 1001}}, ["details", "corrections"], id="correction-too-long"),
    pytest.param({"purpose": "Marketing Emails"}, ["details", "purpose"], id="purpose-not-a-name"),
    pytest.param({"grounds": "x" * 2001}, ["details", "grounds"], id="grounds-too-long"),
    pytest.param("marketing", ["details"], id="not-an-object"),
]


@pytest.mark.parametrize(("details", "loc"), BAD_DETAILS)
async def test_invalid_details_are_422_and_start_nothing(idle_api, temporal_env, details, loc):
    k = key()
    resp = await idle_api.post("/v1/requests", json=body(kind="rectification", details=details),
                               headers={**auth("portal-acme"), "Idempotency-Key": k})
    doc = await assert_problem(resp, 422)
    assert loc in [e["loc"] for e in doc["errors"]], doc
    text = await resp.text()
    assert "Jane Roe" not in text and "blue" not in text and "Marketing Emails" not in text
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))


APPROVAL = [
    pytest.param("objection", {"purpose": MARKETING}, False, id="objection-to-marketing"),
    pytest.param("opt_out", {}, False, id="opt-out"),
    pytest.param("objection", {"purpose": "profiling"}, True, id="objection-to-profiling"),
    pytest.param("consent_withdrawal", {"purpose": MARKETING}, True, id="consent-withdrawal"),
    pytest.param("restriction", {}, True, id="restriction"),
]


@pytest.mark.parametrize(("kind", "details", "approval"), APPROVAL)
async def test_marketing_objections_never_wait_for_approval(idle_api, temporal_env, kind, details, approval):
    # acme's policy asks approval for every kind; the right to stop direct marketing is absolute (Art. 21(3)).
    assert RequestKind(kind) in ACME_POLICY.approval_required
    request_id = (await (await idle_api.post("/v1/requests", json=body(kind=kind, details=details),
                                             headers=auth("portal-acme"))).json())["id"]
    request = await started_input(temporal_env.client, request_id, DsrRequest)
    assert request.approval_required is approval


async def test_globex_policy_is_copied_too(idle_api, temporal_env):
    resp = await idle_api.post("/v1/requests", json=body(kind="restriction"), headers=auth("portal-globex"))
    request = await started_input(temporal_env.client, (await resp.json())["id"], DsrRequest)
    assert request.approval_required is False  # globex asks approval for erasure only
    assert request.policy == RequestPolicy(organisation_managed=True)  # otherwise the defaults
    assert request.verification_timeout_days == 14


async def test_unverified_request(idle_api, temporal_env):
    resp = await idle_api.post("/v1/requests", json=body(verified=False), headers=auth("portal-acme"))
    assert resp.status == 201, await resp.text()
    request = await started_input(temporal_env.client, (await resp.json())["id"], DsrRequest)
    assert request.identity_verified is False and request.verified_by is None

    # Saying how identity was verified while saying it was not: refused.
    k = key()
    resp = await idle_api.post("/v1/requests", json=body(verified=False, verified_by="portal-login"),
                               headers={**auth("portal-acme"), "Idempotency-Key": k})
    await assert_problem(resp, 422)
    resp = await idle_api.post("/v1/requests", json=body(verified="maybe"),
                               headers={**auth("portal-acme"), "Idempotency-Key": k})
    doc = await assert_problem(resp, 422)
    assert ["verified"] in [e["loc"] for e in doc["errors"]]
    assert not await workflow_exists(temporal_env.client, expected_id(idle_api, "acme", k))


async def test_subject_key_is_per_subject_and_tenant(idle_api, idle_settings, temporal_env):
    secret = server_secret(idle_settings)

    async def subject_key_of(token: str, identities: dict[str, Any]) -> str:
        resp = await idle_api.post("/v1/requests", json={"kind": "erasure", "identities": identities},
                                   headers=auth(token))
        assert resp.status == 201, await resp.text()
        request = await started_input(temporal_env.client, (await resp.json())["id"], DsrRequest)
        assert request.subject_key is not None
        return request.subject_key

    by_email = await subject_key_of("portal-acme", {"email": EMAIL, "user_id": "u-1001"})
    assert by_email == await subject_key_of("portal-acme", {"email": EMAIL.upper()})  # the email decides, any case
    assert by_email != await subject_key_of("portal-globex", {"email": EMAIL})
    by_user_id = await subject_key_of("portal-acme", {"user_id": "u-1001"})
    assert by_user_id == expected_subject_key(secret, "acme", "user_id:u-1001")
    assert by_user_id != by_email
    assert by_email == expected_subject_key(secret, "acme", EMAIL)
    for k in (by_email, by_user_id):
        assert len(k) == 32 and set(k) <= set("abcdefghijklmnopqrstuvwxyz234567")


async def test_idempotency_key_covers_the_details(idle_api):
    k = key()
    headers = {**auth("portal-acme"), "Idempotency-Key": k}
    rectify = body(kind="rectification", details={"corrections": {"user.name": "Jane Roe"}})
    first = await idle_api.post("/v1/requests", json=rectify, headers=headers)
    assert first.status == 201
    same = await idle_api.post("/v1/requests", json=rectify, headers=headers)
    assert same.status == 200 and await same.json() == await first.json()

    for changed in ({**rectify, "details": {"corrections": {"user.name": "Jane Doe"}}},
                    {**rectify, "verified": False}):
        resp = await idle_api.post("/v1/requests", json=changed, headers=headers)
        doc = await assert_problem(resp, 422)
        assert doc["detail"] == "Idempotency-Key reused with a different request"
        assert "Jane" not in await resp.text()
