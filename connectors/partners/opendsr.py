"""A partner (processor) reached over OpenDSR 2.0 (formerly OpenGDPR), controller side.

Options of a ``[systems.<name>]`` table with ``type = "opendsr"``::

    [systems.adpartner]
    type = "opendsr"
    base_url = "https://partner.example/v1/"          # includes the major-version path
    processor_domain = "partner.example"              # expected X-OpenDSR-Processor-Domain
    allowed_domains = ["partner.example"]             # callback allow-list (default: [processor_domain])
    api_token_env = "ADPARTNER_TOKEN"                 # optional bearer token for the partner's API
    regulation = "gdpr"                               # or "ccpa"
    identity_format = "auto"                          # "raw", "sha256", or "auto" (from discovery)
    callback_base = "https://dsr.example.com/v1/callbacks/opendsr"   # our public callback prefix
    # certificate_pem = "-----BEGIN CERTIFICATE-----..."  # else fetched from discovery's processor_certificate
    legacy = false                                    # OpenGDPR 1.x: /opengdpr_requests and X-OpenGDPR-* headers

    [systems.adpartner.identity_types]                # our identity -> OpenDSR identity_type (default shown)
    email = "email"
    user_id = "controller_customer_id"

What it does:

- **open**: ``GET discovery``: the identities the partner takes (pairs of type and format), whether it
  takes erasures, and its certificate's URL; the certificate is fetched once and cached per URL.
- **locate**: the partner "may hold" the subject when it takes one of the subject's identity types:
  ``{"partner": 1}``; else ``{}`` (nothing can be sent to it).
- **erase**: ``POST requests`` with a ``subject_request_id`` (UUID v4) chosen once and kept in the
  orchestrator's :class:`~connectors.contract.PlanStore`, so a retried activity sends the same id; the
  partner's 201 (or 200/409 for an id it has already) means submitted. The outcome's ``external`` tells
  the orchestrator to wait for the partner's signed callback (to ``{callback_base}/{request_id}/{system}``)
  or poll ``verify_erasure``.
- **verify_erasure**: ``GET requests/{id}``: ``completed`` leaves nothing; ``pending`` / ``in_progress``
  leave ``{"partner": 1}``; ``cancelled`` raises a non-retryable error.
- **cancel**: ``DELETE requests/{id}`` while the request is still pending.

Callbacks: :mod:`connectors.partners.opendsr_callbacks`. Error messages never hold identities or partner free text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.contract import (
    Capability,
    ConfigurationError,
    Connector,
    ConnectorError,
    ErasureOutcome,
    ExternalWait,
    LocateOutcome,
    PlanItem,
    PlanStore,
    ProgressReporter,
    Subject,
    VerificationOutcome,
)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
COLLECTION = "partner"
PLAN_COLLECTION = "opendsr_request"
STATUSES = ("pending", "in_progress", "completed", "cancelled")


def first_error(exc: ValidationError) -> str:
    """The first validation error as ``loc: message`` on one line."""
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return (f"{where}: " if where else "") + str(err["msg"]).splitlines()[0]


class OpenDsrConfig(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "opendsr"``."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="The partner's OpenDSR base, with the major-version path (…/v1/).")
    processor_domain: str = Field(min_length=1, description="Expected X-OpenDSR-Processor-Domain of callbacks.")
    allowed_domains: list[str] | None = Field(default=None, description="Callback allow-list; [processor_domain].")
    api_token_env: str | None = Field(default=None, description="Environment variable with a bearer token.")
    regulation: Literal["gdpr", "ccpa"] = "gdpr"
    identity_format: Literal["auto", "raw", "sha256"] = Field(
        default="auto", description="How identities are sent; auto: raw if the partner takes it, else sha256.")
    identity_types: dict[str, str] = Field(
        default_factory=lambda: {"email": "email", "user_id": "controller_customer_id"},
        description="Our identity type -> OpenDSR identity_type.")
    callback_base: str = Field(description="Our public callback prefix, e.g. {public_url}/v1/callbacks/opendsr.")
    certificate_pem: str | None = Field(default=None, description="The partner's certificate (else from discovery).")
    legacy: bool = Field(default=False, description="OpenGDPR 1.x: /opengdpr_requests and X-OpenGDPR-* headers.")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per HTTP request.")
    poll_every_seconds: int = Field(default=6 * 3600, ge=60, description="Status polling without callbacks.")
    remind_after_days: int = Field(default=7, ge=1)
    timeout_days: int = Field(default=30, ge=1)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+/\S*$", value.rstrip("/") + "/"):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") + "/"

    @field_validator("callback_base")
    @classmethod
    def _callback_base(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+\S*$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("processor_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return value.strip().lower()

    @model_validator(mode="after")
    def _check(self) -> OpenDsrConfig:
        if self.allowed_domains is None:
            self.allowed_domains = [self.processor_domain]
        self.allowed_domains = [d.strip().lower() for d in self.allowed_domains]
        if not self.allowed_domains:
            raise ValueError("allowed_domains: name at least one processor domain")
        if not self.identity_types:
            raise ValueError("identity_types: map at least one identity type")
        return self

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> OpenDsrConfig:
        """Validate the options and that the token (if any) is at hand.

        Raises:
            ConfigurationError: The first problem, on one line.
        """
        try:
            config = cls.model_validate(dict(options))
        except ValidationError as exc:
            raise ConfigurationError(first_error(exc)) from None
        config.token()
        return config

    def token(self) -> str | None:
        """The bearer token for the partner's API, if one is configured."""
        if self.api_token_env is None:
            return None
        value = os.environ.get(self.api_token_env)
        if not value:
            raise ConfigurationError(f"environment variable {self.api_token_env} (api_token_env) is not set")
        return value

    @property
    def requests_path(self) -> str:
        """``requests`` (OpenDSR 2.0) or ``opengdpr_requests`` (legacy)."""
        return "opengdpr_requests" if self.legacy else "requests"

    def callback_url(self, request_id: str, system: str) -> str:
        """Our callback URL for one request and system."""
        return f"{self.callback_base}/{request_id}/{system}"


def _auth(config: OpenDsrConfig) -> dict[str, str]:
    token = config.token()
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _get_json(session: aiohttp.ClientSession, url: str, what: str, headers: Mapping[str, str]) -> dict:
    try:
        async with session.get(url, headers=dict(headers)) as resp:
            if resp.status in (401, 403):
                raise ConfigurationError(f"{what}: the partner refused our credentials (HTTP {resp.status})")
            if resp.status != 200:
                raise ConnectorError(f"{what}: HTTP {resp.status}", retryable=resp.status in RETRYABLE_STATUS)
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ConnectorError(f"{what}: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConnectorError(f"{what}: the answer is not a JSON object", retryable=False)
    return data


def hash_identity(identity_type: str, value: str) -> str:
    """SHA-256 hex of an identity; emails are trimmed and lower-cased first, other values trimmed."""
    value = value.strip()
    if identity_type == "email":
        value = value.lower()
    return hashlib.sha256(value.encode()).hexdigest()


class OpenDsrConnector(Connector):
    """A processor that erases on its own, asked over OpenDSR 2.0 and answering by signed callback."""

    type_name = "opendsr"
    capabilities = frozenset({Capability.LOCATE, Capability.ERASE})

    def __init__(self, name: str, config: OpenDsrConfig) -> None:
        """Keep the options (no connection yet)."""
        super().__init__(name)
        self.config = config
        self._headers = {"Accept": "application/json", **_auth(config)}
        self._session: aiohttp.ClientSession | None = None
        self._discovery: dict[str, Any] | None = None

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> OpenDsrConnector:
        """Build from the options of ``[systems.<name>]``.

        Raises:
            ConfigurationError: One line saying what is wrong with the options.
        """
        try:
            return cls(name, OpenDsrConfig.parse(options))
        except ConfigurationError as exc:
            raise ConfigurationError(f"systems.{name}: {exc}") from None

    async def open(self) -> None:
        """Read the partner's discovery document and its certificate.

        Raises:
            ConfigurationError: The partner refuses our token or takes no erasure requests.
            ConnectorError: The partner cannot be reached (retryable).
        """
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        try:
            self._discovery = await _get_json(self._session, self.config.base_url + "discovery", "read discovery",
                                              self._headers)
            types = self._discovery.get("supported_subject_request_types")
            if isinstance(types, list) and "erasure" not in types:
                raise ConfigurationError(f"{self.name}: the partner does not take erasure requests")
            from connectors.partners.opendsr_callbacks import partner_certificate  # imports this module
            await partner_certificate(self.config.model_dump(), self._session)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- identities ----------------------------------------------------------------------------

    def _supported(self) -> set[tuple[str, str]]:
        pairs = (self._discovery or {}).get("supported_identities") or []
        return {(p.get("identity_type"), p.get("identity_format", "raw")) for p in pairs if isinstance(p, dict)}

    def subject_identities(self, subject: Subject) -> list[dict[str, str]]:
        """The subject's identities as the partner takes them (type and format), raw or hashed."""
        supported = self._supported()
        out = []
        for ours, value in sorted(subject.identities.items()):
            kind = self.config.identity_types.get(ours)
            if kind is None or not value:
                continue
            formats = ["raw", "sha256"] if self.config.identity_format == "auto" else [self.config.identity_format]
            fmt = next((f for f in formats if (kind, f) in supported), None)
            if fmt is None:
                continue
            out.append({"identity_type": kind, "identity_format": fmt,
                        "identity_value": value if fmt == "raw" else hash_identity(kind, value)})
        return out

    # --- capabilities --------------------------------------------------------------------------

    async def locate(self, subject: Subject) -> LocateOutcome:
        """``{"partner": 1}`` when the partner takes one of the subject's identities (it may hold data)."""
        self._need_open()
        return LocateOutcome(found={COLLECTION: 1} if self.subject_identities(subject) else {})

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Submit the erasure request (once: its id is kept in ``plan``); the partner answers later."""
        self._need_open()
        identities = self.subject_identities(subject)
        if await plan.has_plan():
            reference = await self._reference(plan)
            if reference is None:  # planned before: nothing to send
                return ErasureOutcome()
        else:
            if not identities:
                await plan.seal()  # nothing the partner takes: an empty plan
                return ErasureOutcome()
            reference = str(uuid.uuid4())
            await plan.save([PlanItem(collection=PLAN_COLLECTION, key={"subject_request_id": reference},
                                      action="delete")])
            await plan.seal()
        body = {
            "regulation": self.config.regulation,
            "subject_request_id": reference,
            "subject_request_type": "erasure",
            "subject_identities": identities,
            "submitted_time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "api_version": str((self._discovery or {}).get("api_version") or "2.0"),
            "status_callback_urls": [self.config.callback_url(subject.request_id, self.name)],
        }
        status, _ = await self._call("POST", self.config.requests_path, "submit the erasure request", json_body=body)
        if status not in (200, 201, 409):
            raise ConnectorError(f"submit the erasure request: HTTP {status}", retryable=False)
        progress({"submitted": 1})
        return ErasureOutcome(external=ExternalWait(
            reference=reference, poll_every_seconds=self.config.poll_every_seconds,
            remind_after_days=self.config.remind_after_days, timeout_days=self.config.timeout_days))

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """The partner's status: completed leaves nothing; pending or in progress leave ``{"partner": 1}``.

        Raises:
            ConnectorError: Not retryable when the partner cancelled the request or does not know it.
        """
        self._need_open()
        reference = await self._reference(plan)
        if reference is None:
            return VerificationOutcome()
        status = await self.status(reference)
        if status == "completed":
            return VerificationOutcome()
        if status == "cancelled":
            raise ConnectorError("the partner cancelled the request", retryable=False)
        return VerificationOutcome(remaining={COLLECTION: 1})

    async def status(self, reference: str) -> str:
        """The partner's ``request_status`` for our request ``reference``."""
        code, data = await self._call("GET", f"{self.config.requests_path}/{reference}", "read the request status")
        if code == 404:
            raise ConnectorError("read the request status: the partner does not know the request", retryable=False)
        status = (data or {}).get("request_status")
        if status not in STATUSES:
            raise ConnectorError("read the request status: the partner answered no known request_status")
        return status

    async def cancel(self, subject: Subject, plan: PlanStore) -> bool:
        """Withdraw the request while the partner still has it pending.

        Returns:
            True when the partner cancelled it (or no request was ever sent), False when it no longer
            knows the request.

        Raises:
            ConnectorError: Not retryable when the request is past pending.
        """
        self._need_open()
        reference = await self._reference(plan)
        if reference is None:
            return True
        code, _ = await self._call("DELETE", f"{self.config.requests_path}/{reference}", "cancel the request")
        if code == 404:
            return False
        if code not in (200, 202, 204):
            raise ConnectorError(f"cancel the request: the partner refused (HTTP {code}); it is no longer pending",
                                 retryable=False)
        return True

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    async def _reference(plan: PlanStore) -> str | None:
        if not await plan.has_plan():
            return None
        async for item in plan.items():
            if item.collection == PLAN_COLLECTION:
                return str(item.key["subject_request_id"])
        return None

    def _need_open(self) -> None:
        if self._session is None:
            raise ConnectorError(f"{self.name}: the connector is not open", retryable=False)

    async def _call(self, method: str, path: str, what: str, *, json_body: Any = None) -> tuple[int, Any]:
        """One HTTP call; 404 and 409 are returned, other errors raised without the partner's text."""
        assert self._session is not None
        headers = dict(self._headers)
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(method, self.config.base_url + path, headers=headers,
                                             data=None if json_body is None else json.dumps(json_body)) as resp:
                status = resp.status
                if status in (401, 403):
                    raise ConfigurationError(f"{self.name}: {what}: the partner refused our credentials "
                                             f"(HTTP {status})")
                if status in RETRYABLE_STATUS:
                    raise ConnectorError(f"{what}: HTTP {status}", retryable=True)
                if status >= 400 and status not in (404, 405, 409):
                    raise ConnectorError(f"{what}: HTTP {status}", retryable=False)
                text = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectorError(f"{what}: {type(exc).__name__}") from None
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        return status, data
