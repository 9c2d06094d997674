"""The conformance kit on the OpenDSR partner connector, against the test partner of ``test_opendsr``.

The partner completes an erasure later, on its own (``ErasureOutcome.external``): ``complete_external``
marks the request completed at the test partner, so that ``verify_erasure`` then reports nothing remaining.
The absent subject is one with no identity the partner takes (the partner "may hold" anyone it can identify).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from connectors.conformance import ConnectorConformance
from connectors.contract import Connector, ErasureOutcome, Subject
from tests.connectors.opendsr_partner import DOMAIN, Partner, running_partner

CALLBACK_BASE = "https://dsr.example.com/v1/callbacks/opendsr"


class TestOpenDsrConformance(ConnectorConformance):
    connector_type = "opendsr"

    @pytest_asyncio.fixture
    async def partner(self) -> AsyncIterator[Partner]:
        async with running_partner(Partner()) as p:
            self.test_partner = p  # for complete_external
            yield p

    @pytest_asyncio.fixture
    async def connector_options(self, partner: Partner) -> dict[str, Any]:
        return {"base_url": partner.url + "/v1/", "processor_domain": DOMAIN, "callback_base": CALLBACK_BASE}

    @pytest_asyncio.fixture
    async def seeded_subject(self, partner: Partner) -> Subject:
        return Subject(request_id="conformance", identities={"email": "Jane@Example.com", "user_id": "u-1001"})

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        return Subject(request_id="conformance", identities={"phone": "+4912345"})

    @pytest_asyncio.fixture
    async def bad_options(self, partner: Partner) -> list[dict[str, Any]]:
        good = {"base_url": partner.url + "/v1/", "processor_domain": DOMAIN, "callback_base": CALLBACK_BASE}
        return [
            {"processor_domain": DOMAIN, "callback_base": CALLBACK_BASE},
            {"base_url": partner.url + "/v1/", "processor_domain": DOMAIN},
            {**good, "base_url": "partner.example/v1/"},
            {**good, "callback_base": "dsr.example.com/callbacks"},
            {**good, "processor_domain": ""},
            {**good, "regulation": "hipaa"},
            {**good, "identity_format": "md5"},
            {**good, "identity_types": {}},
            {**good, "allowed_domains": []},
            {**good, "api_token_env": "CONFORMANCE_UNSET_PARTNER_TOKEN"},
            {**good, "timeout": 0},
        ]

    async def complete_external(self, connector: Connector, subject: Subject, outcome: ErasureOutcome) -> None:
        """The partner finishes the request it was sent."""
        assert outcome.external is not None
        self.test_partner.set_status(outcome.external.reference, "completed")
