"""A partner without OpenDSR, asked over a signed webhook (HMAC-SHA256 over timestamp and body).

Options of a ``[systems.<name>]`` table with ``type = "partner_webhook"``::

    [systems.mailer]
    type = "partner_webhook"
    url = "https://mailer.example/dsr"                           # the partner's endpoint
    secret_env = "MAILER_WEBHOOK_SECRET"                         # the shared HMAC secret (``secret`` in tests)
    callback_base = "https://dsr.example.com/v1/callbacks/webhook"   # our public callback prefix
    replay_window_seconds = 300
    timeout = 30

Every message, both ways, carries ``X-DSR-Timestamp`` (unix seconds) and
``X-DSR-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{raw_body}")>``.

- **locate**: ``{"partner": 1}`` (the partner may hold data; it cannot be asked what).
- **erase**: ``POST url`` with ``{"request_id", "type": "erasure", "identities", "callback_url"}`` and
  ``Idempotency-Key: {request_id}:{system}``; the partner's answer is kept in the orchestrator's
  :class:`~connectors.contract.PlanStore`, so a retried activity does not ask again (and a crash between the
  answer and the store sends the same key, which the partner deduplicates). ``{"status": "completed"}``
  completes synchronously; ``{"status": "accepted"}`` (optionally with a ``status_url`` on the partner's own
  host) makes the orchestrator wait for the signed callback to ``{callback_base}/{request_id}/{system}``.
- **verify_erasure**: ``GET status_url`` (signed the same way over an empty body) when the partner offered
  one; else ``{"partner": 1}`` remains until the callback arrives.

Callbacks are checked by :func:`verify_webhook_callback` before anything is parsed: the timestamp within the
replay window, the signature (constant-time compare), and a signature not seen before by this process. The
body must be ``{"request_id": <ours>, "status": "completed" | "in_progress" | "pending" | "cancelled"}``; the
``request_id`` binds a signed callback to its own request, so it cannot be replayed to another request's URL.
The seen-signature memory is per API process: a replay to another process within the window is refused only
once the window has passed (the timestamp check); a replayed terminal status changes nothing anyway, because
the partner wait ignores statuses after its terminal one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Mapping, MutableMapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

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
from connectors.partners.opendsr import RETRYABLE_STATUS, first_error
from connectors.partners.opendsr_callbacks import CallbackRejected

COLLECTION = "partner"
PLAN_COLLECTION = "webhook_request"
STATUSES = ("pending", "in_progress", "completed", "cancelled")
TIMESTAMP_HEADER = "X-DSR-Timestamp"
SIGNATURE_HEADER = "X-DSR-Signature"

__all__ = ["CallbackRejected", "WebhookConfig", "WebhookConnector", "sign", "signed_headers",
           "verify_webhook_callback"]


class WebhookConfig(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "partner_webhook"``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="The partner's webhook endpoint.")
    secret_env: str | None = Field(default=None, description="Environment variable holding the HMAC secret.")
    secret: str | None = Field(default=None, description="The HMAC secret itself (tests; prefer secret_env).")
    callback_base: str = Field(description="Our public callback prefix, e.g. {public_url}/v1/callbacks/webhook.")
    replay_window_seconds: int = Field(default=300, ge=10, le=3600)
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per HTTP request.")
    poll_every_seconds: int = Field(default=6 * 3600, ge=60, description="Status polling (with a status_url).")
    remind_after_days: int = Field(default=7, ge=1)
    timeout_days: int = Field(default=30, ge=1)

    @field_validator("url", "callback_base")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+\S*$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if (self.secret_env is None) == (self.secret is None):
            raise ValueError("name the HMAC secret with exactly one of secret_env and secret")
        return self

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> WebhookConfig:
        """Validate the options and that the secret is at hand.

        Raises:
            ConfigurationError: The first problem, on one line.
        """
        try:
            config = cls.model_validate(dict(options))
        except ValidationError as exc:
            raise ConfigurationError(first_error(exc)) from None
        config.key()
        return config

    def key(self) -> bytes:
        """The HMAC secret."""
        if self.secret is not None:
            value = self.secret
        else:
            assert self.secret_env is not None
            value = os.environ.get(self.secret_env, "")
            if not value:
                raise ConfigurationError(f"environment variable {self.secret_env} (secret_env) is not set")
        return value.encode()

    def callback_url(self, request_id: str, system: str) -> str:
        """Our callback URL for one request and system."""
        return f"{self.callback_base}/{request_id}/{system}"


def sign(key: bytes, timestamp: int | str, raw_body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``f"{timestamp}.{raw_body}"``."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + raw_body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(key: bytes, raw_body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The timestamp and signature headers of a message with ``raw_body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(key, ts, raw_body)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    folded = {k.lower(): v for k, v in headers.items()}
    value = folded.get(name.lower())
    return None if value is None else value.strip()


def verify_webhook_callback(options: Mapping[str, Any], headers: Mapping[str, str], raw_body: bytes,
                            now: datetime | float, seen: MutableMapping[str, float] | None = None, *,
                            request_id: str | None = None) -> dict[str, Any]:
    """Check a partner's signed callback, then parse it.

    Args:
        options: The system's options (the secret and ``replay_window_seconds``).
        headers: The request's headers.
        raw_body: The body exactly as received.
        now: The current time (datetime or unix seconds).
        seen: Signatures already accepted, with their timestamps (the API's per-process memory); entries
            older than the window are dropped, the accepted signature is added.
        request_id: When given, the body's ``request_id`` must be this one.

    Returns:
        The body, a JSON object whose ``status`` is one of :data:`STATUSES`.

    Raises:
        CallbackRejected: Stale, forged, tampered or replayed (``malformed`` False: answer 403), or a signed
            body that is not a status (``malformed`` True: answer 400). Messages hold no submitted values.
        ConfigurationError: The options are wrong.
    """
    config = WebhookConfig.parse(options)
    now_ts = now.timestamp() if isinstance(now, datetime) else float(now)
    ts_text = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not ts_text or not signature:
        raise CallbackRejected("the timestamp or signature header is missing")
    if not re.fullmatch(r"\d{1,12}", ts_text):
        raise CallbackRejected("the timestamp is not unix seconds")
    if abs(now_ts - int(ts_text)) > config.replay_window_seconds:
        raise CallbackRejected("the timestamp is outside the replay window")
    expected = sign(config.key(), ts_text, raw_body)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise CallbackRejected("the signature does not verify")
    if seen is not None:
        for old in [s for s, at in seen.items() if now_ts - at > config.replay_window_seconds]:
            del seen[old]
        if expected in seen:
            raise CallbackRejected("the callback was already received (replay)")
        seen[expected] = float(ts_text)
    try:
        data = json.loads(raw_body)
    except ValueError:
        raise CallbackRejected("the body is not JSON", malformed=True) from None
    if not isinstance(data, dict):
        raise CallbackRejected("the body is not a JSON object", malformed=True)
    if request_id is not None and data.get("request_id") != request_id:
        raise CallbackRejected("the callback is not for this request")
    if data.get("status") not in STATUSES:
        raise CallbackRejected("status is not a known status", malformed=True)
    return data


class WebhookConnector(Connector):
    """A partner that erases on request over a signed webhook, synchronously or by signed callback."""

    type_name = "partner_webhook"
    capabilities = frozenset({Capability.LOCATE, Capability.ERASE})

    def __init__(self, name: str, config: WebhookConfig) -> None:
        """Keep the options (no connection yet)."""
        super().__init__(name)
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> WebhookConnector:
        """Build from the options of ``[systems.<name>]``.

        Raises:
            ConfigurationError: One line saying what is wrong with the options.
        """
        try:
            return cls(name, WebhookConfig.parse(options))
        except ConfigurationError as exc:
            raise ConfigurationError(f"systems.{name}: {exc}") from None

    async def open(self) -> None:
        """Open the HTTP session."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def locate(self, subject: Subject) -> LocateOutcome:
        """``{"partner": 1}``: the partner may hold data for any subject."""
        return LocateOutcome(found={COLLECTION: 1} if subject.identities else {})

    def idempotency_key(self, subject: Subject) -> str:
        """The partner's key for our request: asked once per request and system."""
        return f"{subject.request_id}:{self.name}"

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Ask the partner to erase (once: its answer is kept in ``plan``); it completes now or calls back."""
        answer = await self._answer(plan)
        if answer is None:
            if not subject.identities:
                await plan.seal()
                return ErasureOutcome()
            body = {"request_id": subject.request_id, "type": "erasure", "identities": dict(subject.identities),
                    "callback_url": self.config.callback_url(subject.request_id, self.name)}
            status, data = await self._call("POST", self.config.url, "submit the erasure request",
                                             json.dumps(body).encode(),
                                             {"Idempotency-Key": self.idempotency_key(subject)})
            if status not in (200, 201, 202):
                raise ConnectorError(f"submit the erasure request: HTTP {status}", retryable=False)
            state = (data or {}).get("status")
            if state not in ("completed", "accepted"):
                raise ConnectorError("submit the erasure request: the partner answered no known status",
                                     retryable=False)
            answer = {"idempotency_key": self.idempotency_key(subject), "status": state}
            status_url = (data or {}).get("status_url")
            if state == "accepted" and isinstance(status_url, str) and self._own_host(status_url):
                answer["status_url"] = status_url
            await plan.save([PlanItem(collection=PLAN_COLLECTION, key=answer, action="delete")])
            await plan.seal()
            progress({"submitted": 1})
        if answer["status"] == "completed":
            return ErasureOutcome()
        return ErasureOutcome(external=ExternalWait(
            reference=subject.request_id, poll_every_seconds=self.config.poll_every_seconds,
            remind_after_days=self.config.remind_after_days, timeout_days=self.config.timeout_days))

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Completed leaves nothing; accepted asks the ``status_url`` if any, else ``{"partner": 1}`` remains.

        Raises:
            ConnectorError: Not retryable when the partner cancelled the request.
        """
        answer = await self._answer(plan)
        if answer is None or answer.get("status") == "completed":
            return VerificationOutcome()
        url = answer.get("status_url")
        if not url:
            return VerificationOutcome(remaining={COLLECTION: 1})
        code, data = await self._call("GET", url, "read the request status", b"", {})
        state = (data or {}).get("status") if code == 200 else None
        if state == "completed":
            return VerificationOutcome()
        if state == "cancelled":
            raise ConnectorError("the partner cancelled the request", retryable=False)
        return VerificationOutcome(remaining={COLLECTION: 1})

    # --- helpers -------------------------------------------------------------------------------

    def _own_host(self, url: str) -> bool:
        ours, theirs = urlsplit(self.config.url), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    @staticmethod
    async def _answer(plan: PlanStore) -> dict[str, Any] | None:
        if not await plan.has_plan():
            return None
        async for item in plan.items():
            if item.collection == PLAN_COLLECTION:
                return dict(item.key)
        return {"status": "completed"}  # sealed empty: nothing was sent

    async def _call(self, method: str, url: str, what: str, raw: bytes,
                    extra: Mapping[str, str]) -> tuple[int, Any]:
        """One signed HTTP call; errors raised without the partner's text."""
        if self._session is None:
            raise ConnectorError(f"{self.name}: the connector is not open", retryable=False)
        headers = {"Accept": "application/json", **signed_headers(self.config.key(), raw), **extra}
        if raw:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(method, url, headers=headers, data=raw or None) as resp:
                status = resp.status
                if status in (401, 403):
                    raise ConfigurationError(f"{self.name}: {what}: the partner refused our signature "
                                             f"(HTTP {status})")
                if status in RETRYABLE_STATUS:
                    raise ConnectorError(f"{what}: HTTP {status}", retryable=True)
                text = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectorError(f"{what}: {type(exc).__name__}") from None
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        return status, data if isinstance(data, dict) else None
