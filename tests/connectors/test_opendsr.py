"""The OpenDSR connector against a partner server the tests start (real HTTP, real RSA signatures)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.contract import Capability, ConfigurationError, ConnectorError, Subject
from connectors.partners.opendsr import OpenDsrConnector
from connectors.partners.opendsr_callbacks import CallbackRejected, partner_certificate, verify_callback
from connectors.registry import build_connector
from connectors.testing import MemoryPlanStore
from tests.connectors.opendsr_partner import DOMAIN, Partner, make_key, running_partner, self_signed

CALLBACK_BASE = "https://dsr.example.com/v1/callbacks/opendsr"
JANE = Subject(request_id="req_opendsr1", identities={"email": "Jane@Example.com", "user_id": "u-1001"})


def options(partner: Partner, **extra: Any) -> dict[str, Any]:
    return {"base_url": partner.url + "/v1/", "processor_domain": DOMAIN, "callback_base": CALLBACK_BASE, **extra}


def _progress(_: Any) -> None:
    pass


@pytest.fixture
async def partner() -> AsyncIterator[Partner]:
    async with running_partner(Partner()) as p:
        yield p


@pytest.fixture
async def connector(partner: Partner) -> AsyncIterator[OpenDsrConnector]:
    c = build_connector("adpartner", "opendsr", options(partner))
    assert isinstance(c, OpenDsrConnector)
    await c.open()
    yield c
    await c.close()


async def test_registered_and_declares_locate_and_erase(connector):
    assert connector.type_name == "opendsr"
    assert connector.capabilities == {Capability.LOCATE, Capability.ERASE}


async def test_locate_says_may_hold_for_supported_identities(connector):
    assert (await connector.locate(JANE)).found == {"partner": 1}
    assert (await connector.locate(Subject(request_id="r", identities={"phone": "+4912345"}))).found == {}


async def test_erase_submits_a_uuid4_with_raw_identities_and_our_callback(partner, connector):
    plan = MemoryPlanStore()
    outcome = await connector.erase(JANE, plan, _progress)
    assert outcome.external is not None and outcome.completes_at is None
    [post] = partner.posts
    reference = post["subject_request_id"]
    assert uuid.UUID(reference).version == 4 and outcome.external.reference == reference
    assert post["regulation"] == "gdpr" and post["subject_request_type"] == "erasure"
    assert post["status_callback_urls"] == [f"{CALLBACK_BASE}/req_opendsr1/adpartner"]
    assert sorted(post["subject_identities"], key=lambda i: i["identity_type"]) == [
        {"identity_type": "controller_customer_id", "identity_format": "raw", "identity_value": "u-1001"},
        {"identity_type": "email", "identity_format": "raw", "identity_value": "Jane@Example.com"},
    ]
    assert post["submitted_time"].endswith("Z")


async def test_sha256_identities_when_the_partner_takes_only_hashes():
    partner = Partner(identities=[{"identity_type": "email", "identity_format": "sha256"}])
    async with running_partner(partner):
        c = build_connector("adpartner", "opendsr", options(partner))
        await c.open()
        try:
            await c.erase(JANE, MemoryPlanStore(), _progress)
        finally:
            await c.close()
    [post] = partner.posts
    assert post["subject_identities"] == [{"identity_type": "email", "identity_format": "sha256",
                                           "identity_value": hashlib.sha256(b"jane@example.com").hexdigest()}]
    assert "Jane" not in json.dumps(post)


async def test_a_retried_erase_reuses_the_same_id(partner, connector):
    plan = MemoryPlanStore()
    first = await connector.erase(JANE, plan, _progress)
    second = await connector.erase(JANE, plan, _progress)  # the partner answers 409: already submitted
    assert first.external.reference == second.external.reference
    assert len({p["subject_request_id"] for p in partner.posts}) == 1 and len(partner.requests) == 1


async def test_verify_reflects_the_partner_status(partner, connector):
    plan = MemoryPlanStore()
    reference = (await connector.erase(JANE, plan, _progress)).external.reference
    assert (await connector.verify_erasure(JANE, plan)).remaining == {"partner": 1}
    partner.set_status(reference, "in_progress")
    assert (await connector.verify_erasure(JANE, plan)).remaining == {"partner": 1}
    partner.set_status(reference, "completed")
    assert (await connector.verify_erasure(JANE, plan)).ok
    partner.set_status(reference, "cancelled")
    with pytest.raises(ConnectorError, match="cancelled") as info:
        await connector.verify_erasure(JANE, plan)
    assert info.value.retryable is False


async def test_nothing_sent_for_a_subject_the_partner_cannot_identify(partner, connector):
    plan = MemoryPlanStore()
    nobody = Subject(request_id="r", identities={"phone": "+4912345"})
    outcome = await connector.erase(nobody, plan, _progress)
    assert outcome.external is None and partner.posts == []
    assert (await connector.erase(nobody, plan, _progress)).external is None
    assert (await connector.verify_erasure(nobody, plan)).ok


async def test_cancel_while_pending_only(partner, connector):
    plan = MemoryPlanStore()
    reference = (await connector.erase(JANE, plan, _progress)).external.reference
    assert await connector.cancel(JANE, plan) is True
    assert partner.requests[reference]["request_status"] == "cancelled"
    other = MemoryPlanStore()
    ref2 = (await connector.erase(JANE, other, _progress)).external.reference
    partner.set_status(ref2, "in_progress")
    with pytest.raises(ConnectorError, match="no longer pending"):
        await connector.cancel(JANE, other)


async def test_legacy_opengdpr_paths():
    partner = Partner(legacy=True)
    async with running_partner(partner):
        c = build_connector("adpartner", "opendsr", options(partner, legacy=True))
        await c.open()
        try:
            plan = MemoryPlanStore()
            reference = (await c.erase(JANE, plan, _progress)).external.reference
            partner.set_status(reference, "completed")
            assert (await c.verify_erasure(JANE, plan)).ok
        finally:
            await c.close()


async def test_bad_options_fail_clearly(partner, monkeypatch):
    for bad in [{**options(partner), "unknown": 1}, {"processor_domain": DOMAIN, "callback_base": CALLBACK_BASE},
                options(partner, base_url="ftp://x"), options(partner, api_token_env="DSR_TEST_UNSET_TOKEN")]:
        monkeypatch.delenv("DSR_TEST_UNSET_TOKEN", raising=False)
        with pytest.raises(ConfigurationError) as info:
            build_connector("adpartner", "opendsr", bad)
        assert "\n" not in str(info.value) and str(info.value).startswith("systems.adpartner: ")


async def test_errors_hold_no_personal_data():
    partner = Partner()
    async with running_partner(partner):
        c = build_connector("adpartner", "opendsr", options(partner))
        await c.open()
        await c.close()
    # the partner is gone now: the error names the operation, not the subject
    c2 = build_connector("adpartner", "opendsr", options(partner))
    with pytest.raises(ConnectorError) as info:
        await c2.open()
    assert info.value.retryable and "jane" not in str(info.value).lower()


# --- callbacks -------------------------------------------------------------------------------


async def _submitted(partner: Partner, connector: OpenDsrConnector) -> str:
    return (await connector.erase(JANE, MemoryPlanStore(), _progress)).external.reference


async def test_a_good_signature_is_accepted(partner, connector):
    reference = await _submitted(partner, connector)
    partner.set_status(reference, "completed")
    body, headers = partner.callback(reference)
    pem = await partner_certificate(options(partner))
    data = verify_callback(options(partner), headers, body, certificate_pem=pem)
    assert data["request_status"] == "completed" and data["subject_request_id"] == reference
    # the certificate may also be configured directly
    assert verify_callback(options(partner, certificate_pem=partner.certificate.decode()), headers, body)


async def test_legacy_header_names_are_accepted(partner, connector):
    reference = await _submitted(partner, connector)
    body, headers = partner.callback(reference, legacy=True)
    assert verify_callback(options(partner), headers, body, certificate_pem=partner.certificate)


@pytest.mark.parametrize("case", ["forged", "tampered", "wrong-domain", "no-signature", "not-base64",
                                  "certificate-for-another-domain"])
async def test_bad_callbacks_are_rejected(partner, connector, case):
    reference = await _submitted(partner, connector)
    body, headers = partner.callback(reference)
    cert = partner.certificate
    opts = options(partner)
    if case == "forged":
        body, headers = partner.callback(reference, key=make_key())
    elif case == "tampered":
        body = body.replace(b'"pending"', b'"completed"')
    elif case == "wrong-domain":
        body, headers = partner.callback(reference, domain="evil.example")
    elif case == "no-signature":
        headers.pop("X-OpenDSR-Signature")
    elif case == "not-base64":
        headers["X-OpenDSR-Signature"] = "%%%"
    elif case == "certificate-for-another-domain":  # signed well, but the certificate names another domain
        other = make_key()
        cert = self_signed(other, "other.example")
        headers = partner.headers(body, key=other)
    with pytest.raises(CallbackRejected) as info:
        verify_callback(opts, headers, body, certificate_pem=cert)
    assert info.value.malformed is False and "\n" not in info.value.reason


async def test_a_signed_body_that_is_not_json_is_malformed(partner):
    body = b"not json"
    with pytest.raises(CallbackRejected) as info:
        verify_callback(options(partner), partner.headers(body), body, certificate_pem=partner.certificate)
    assert info.value.malformed is True


async def test_the_certificate_is_fetched_once(partner):
    opts = options(partner)
    first = await partner_certificate(opts)
    assert first == partner.certificate
    assert await partner_certificate(opts) == first
    assert partner.certificate_fetches == 1
