"""The conformance kit on the signed-webhook partner connector, against the test partner of ``webhook_partner``.

The partner accepts an erasure and offers a ``status_url``: ``complete_external`` marks the request completed at
the test partner, so that ``verify_erasure`` then polls the status URL and reports nothing remaining. The absent
subject carries no identity (the partner "may hold" anyone it can be asked about; nothing is sent without one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from connectors.conformance import ConnectorConformance
from connectors.contract import Connector, ErasureOutcome, Subject
from tests.connectors.webhook_partner import SECRET, WebhookPartner, running_webhook_partner

CALLBACK_BASE = "https://dsr.example.com/v1/callbacks/webhook"


class TestWebhookConformance(ConnectorConformance):
    connector_type = "partner_webhook"

    @pytest_asyncio.fixture
    async def partner(self) -> AsyncIterator[WebhookPartner]:
        async with running_webhook_partner(WebhookPartner(mode="accepted", offer_status_url=True)) as p:
            self.test_partner = p  # for complete_external
            yield p

    @pytest_asyncio.fixture
    async def connector_options(self, partner: WebhookPartner) -> dict[str, Any]:
        return {"url": partner.url + "/dsr", "secret": SECRET, "callback_base": CALLBACK_BASE}

    @pytest_asyncio.fixture
    async def seeded_subject(self, partner: WebhookPartner) -> Subject:
        return Subject(request_id="conformance", identities={"email": "jane@example.com"})

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        return Subject(request_id="conformance-absent", identities={})

    @pytest_asyncio.fixture
    async def bad_options(self, partner: WebhookPartner) -> list[dict[str, Any]]:
        good = {"url": partner.url + "/dsr", "secret": SECRET, "callback_base": CALLBACK_BASE}
        return [
            {"secret": SECRET, "callback_base": CALLBACK_BASE},
            {"url": partner.url + "/dsr", "secret": SECRET},
            {"url": partner.url + "/dsr", "callback_base": CALLBACK_BASE},
            {**good, "url": "partner.example/dsr"},
            {**good, "callback_base": "dsr.example.com/callbacks"},
            {**good, "secret_env": "CONFORMANCE_WEBHOOK_SECRET"},
            {**{k: v for k, v in good.items() if k != "secret"}, "secret_env": "CONFORMANCE_UNSET_WEBHOOK_SECRET"},
            {**good, "replay_window_seconds": 5},
            {**good, "timeout": 0},
            {**good, "poll_every_seconds": 1},
            {**good, "remind_after_days": 0},
            {**good, "timeout_days": 0},
        ]

    async def complete_external(self, connector: Connector, subject: Subject, outcome: ErasureOutcome) -> None:
        """The partner finishes the request it accepted."""
        assert outcome.external is not None
        assert outcome.external.reference in self.test_partner.status
        self.test_partner.status[outcome.external.reference] = "completed"
