"""The signed-webhook partner connector against a partner the tests start, and its callback verification."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.contract import Capability, ConfigurationError, Subject
from connectors.partners.manual import ManualTaskConnector
from connectors.partners.webhook import CallbackRejected, WebhookConnector, sign, verify_webhook_callback
from connectors.registry import build_connector
from connectors.testing import MemoryPlanStore
from tests.connectors.webhook_partner import SECRET, WebhookPartner, hmac_headers, running_webhook_partner

CALLBACK_BASE = "https://dsr.example.com/v1/callbacks/webhook"
JANE = Subject(request_id="req_webhook1", identities={"email": "jane@example.com"})


def options(partner: WebhookPartner | None = None, **extra: Any) -> dict[str, Any]:
    url = (partner.url if partner else "https://partner.example") + "/dsr"
    return {"url": url, "secret": SECRET, "callback_base": CALLBACK_BASE, **extra}


def _progress(_: Any) -> None:
    pass


async def _connector(partner: WebhookPartner) -> WebhookConnector:
    c = build_connector("mailer", "partner_webhook", options(partner))
    assert isinstance(c, WebhookConnector)
    await c.open()
    return c


@pytest.fixture
async def partner() -> AsyncIterator[WebhookPartner]:
    async with running_webhook_partner(WebhookPartner()) as p:
        yield p


async def test_synchronous_completion(partner):
    partner.mode = "completed"
    c = await _connector(partner)
    try:
        assert c.capabilities == {Capability.LOCATE, Capability.ERASE}
        assert (await c.locate(JANE)).found == {"partner": 1}
        plan = MemoryPlanStore()
        out = await c.erase(JANE, plan, _progress)
        assert out.external is None
        assert (await c.verify_erasure(JANE, plan)).ok
    finally:
        await c.close()
    [sent] = partner.received
    assert partner.refused == 0  # the partner verified our signature itself
    assert sent["key"] == "req_webhook1:mailer"
    assert sent == {"key": "req_webhook1:mailer", "request_id": "req_webhook1", "type": "erasure",
                    "identities": {"email": "jane@example.com"},
                    "callback_url": f"{CALLBACK_BASE}/req_webhook1/mailer"}


async def test_accepted_waits_and_asks_only_once(partner):
    c = await _connector(partner)
    try:
        plan = MemoryPlanStore()
        out = await c.erase(JANE, plan, _progress)
        assert out.external is not None and out.external.reference == "req_webhook1"
        again = await c.erase(JANE, plan, _progress)  # a retried activity: the plan holds the answer
        assert again.external == out.external
        assert len(partner.received) == 1
        assert (await c.verify_erasure(JANE, plan)).remaining == {"partner": 1}  # no status_url: the callback
    finally:
        await c.close()


async def test_status_url_is_polled_with_a_signature(partner):
    partner.offer_status_url = True
    c = await _connector(partner)
    try:
        plan = MemoryPlanStore()
        assert (await c.erase(JANE, plan, _progress)).external is not None
        assert (await c.verify_erasure(JANE, plan)).remaining == {"partner": 1}
        partner.status["req_webhook1"] = "completed"
        assert (await c.verify_erasure(JANE, plan)).ok
        assert partner.refused == 0
    finally:
        await c.close()


async def test_a_wrong_secret_is_a_configuration_error(partner):
    c = build_connector("mailer", "partner_webhook", options(partner, secret="not-the-partners"))
    await c.open()
    try:
        with pytest.raises(ConfigurationError):
            await c.erase(JANE, MemoryPlanStore(), _progress)
    finally:
        await c.close()


def test_options_are_checked(monkeypatch):
    with pytest.raises(ConfigurationError, match="secret"):
        build_connector("m", "partner_webhook", {"url": "https://p.example/dsr", "callback_base": CALLBACK_BASE})
    with pytest.raises(ConfigurationError, match="MAILER_SECRET"):
        build_connector("m", "partner_webhook", {"url": "https://p.example/dsr", "callback_base": CALLBACK_BASE,
                                                 "secret_env": "MAILER_SECRET"})
    monkeypatch.setenv("MAILER_SECRET", "s3cret")
    assert isinstance(build_connector("m", "partner_webhook", {
        "url": "https://p.example/dsr", "callback_base": CALLBACK_BASE, "secret_env": "MAILER_SECRET"}),
        WebhookConnector)


# --- callbacks ----------------------------------------------------------------------------------


def test_a_signed_callback_verifies_once():
    partner = WebhookPartner()
    body, headers = partner.callback("req_webhook1")
    assert headers["X-DSR-Signature"] == sign(SECRET.encode(), headers["X-DSR-Timestamp"], body)
    seen: dict[str, float] = {}
    data = verify_webhook_callback(options(), headers, body, time.time(), seen, request_id="req_webhook1")
    assert data["status"] == "completed"
    with pytest.raises(CallbackRejected, match="replay") as exc:
        verify_webhook_callback(options(), headers, body, time.time(), seen, request_id="req_webhook1")
    assert not exc.value.malformed


@pytest.mark.parametrize("case", ["stale", "future", "forged", "tampered", "unsigned", "another-request"])
def test_bad_callbacks_are_refused(case):
    partner = WebhookPartner()
    now = time.time()
    body, headers = partner.callback("req_webhook1")
    if case == "stale":
        body, headers = partner.callback("req_webhook1", timestamp=int(now) - 301)
    elif case == "future":
        body, headers = partner.callback("req_webhook1", timestamp=int(now) + 301)
    elif case == "forged":
        body, headers = partner.callback("req_webhook1", secret="an-attackers-guess")
    elif case == "tampered":
        body = body.replace(b"completed", b"cancelled")
    elif case == "unsigned":
        headers = {"Content-Type": "application/json"}
    seen: dict[str, float] = {}
    rid = "req_other" if case == "another-request" else "req_webhook1"
    with pytest.raises(CallbackRejected) as exc:
        verify_webhook_callback(options(), headers, body, now, seen, request_id=rid)
    assert not exc.value.malformed
    assert "jane" not in exc.value.reason


def test_a_replay_is_refused_after_the_window_by_the_timestamp():
    partner = WebhookPartner()
    body, headers = partner.callback("req_webhook1")
    later = int(headers["X-DSR-Timestamp"]) + 301
    with pytest.raises(CallbackRejected, match="window"):
        verify_webhook_callback(options(), headers, body, later, {})


def test_malformed_signed_bodies():
    for body in [b"[1, 2", b"[1, 2]", json.dumps({"request_id": "r", "status": "exploded"}).encode()]:
        with pytest.raises(CallbackRejected) as exc:
            verify_webhook_callback(options(), hmac_headers(SECRET, body), body, time.time(), {})
        assert exc.value.malformed


# --- manual task --------------------------------------------------------------------------------


async def test_manual_task_waits_for_a_person():
    c = build_connector("print_shop", "manual_task", {"instructions": "Delete the customer by hand."})
    assert isinstance(c, ManualTaskConnector)
    assert c.capabilities == {Capability.LOCATE, Capability.ERASE}
    assert (await c.locate(JANE)).found == {"manual": 1}
    out = await c.erase(JANE, MemoryPlanStore(), _progress)
    assert out.external is not None and out.external.reference == "manual"
    assert out.external.remind_after_days == 3 and out.external.timeout_days == 30
    assert (await c.verify_erasure(JANE, MemoryPlanStore())).remaining == {"manual": 1}
    with pytest.raises(ConfigurationError, match="instructions"):
        build_connector("print_shop", "manual_task", {"instructions": "  "})
