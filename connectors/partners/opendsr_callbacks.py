"""Checking an OpenDSR partner's signed status callbacks, and the partner certificate they are checked with.

:func:`verify_callback` checks a callback before anything is parsed: the processor domain is on the
allow-list, the certificate names the domain, and ``X-OpenDSR-Signature`` (base64 RSA PKCS#1 v1.5 over the
SHA-256 of the raw body) verifies with its key. :func:`partner_certificate` gives the certificate: the
``certificate_pem`` option, else the one named by the partner's discovery, fetched once and cached per URL.
Error messages never hold identities or partner free text.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import ValidationError

from connectors.contract import ConnectorError
from connectors.partners.opendsr import RETRYABLE_STATUS, OpenDsrConfig, _auth, _get_json, first_error

_CERT_CACHE: dict[str, bytes] = {}
"""Partner certificates (PEM) fetched from discovery, by certificate URL."""


class CallbackRejected(Exception):
    """A callback that must not be acted on; the message is one line without submitted values.

    ``malformed`` is True when the signature was good but the content is not a status (answer 400);
    otherwise the callback is not authentic (answer 403).
    """

    def __init__(self, reason: str, *, malformed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed


def _header(headers: Mapping[str, str], *names: str) -> str | None:
    folded = {k.lower(): v for k, v in headers.items()}
    for name in names:
        value = folded.get(name.lower())
        if value is not None:
            return value.strip()
    return None


def _san_matches(cert: x509.Certificate, domain: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == domain:
            return True
        if name.startswith("*.") and domain.endswith(name[1:]) and domain.count(".") == name.count("."):
            return True
    return False


def verify_callback(options: Mapping[str, Any], headers: Mapping[str, str], raw_body: bytes,
                    *, certificate_pem: bytes | str | None = None) -> dict[str, Any]:
    """Check a partner's callback, then parse it.

    Args:
        options: The system's options (``allowed_domains``, ``processor_domain``, ``certificate_pem``).
        headers: The request headers; ``X-OpenDSR-*`` and legacy ``X-OpenGDPR-*`` names are accepted.
        raw_body: The body exactly as received: the signature covers these bytes.
        certificate_pem: The partner's certificate; defaults to the ``certificate_pem`` option
            (see :func:`partner_certificate` for one fetched from discovery).

    Returns:
        The parsed JSON object.

    Raises:
        CallbackRejected: Unknown domain, missing or bad signature, certificate not naming the
            domain (``malformed`` False), or a signed body that is not a JSON object (``malformed`` True).
    """
    try:
        config = OpenDsrConfig.model_validate(dict(options))
    except ValidationError as exc:
        raise CallbackRejected(f"the system is misconfigured: {first_error(exc)}") from None
    domain = _header(headers, "X-OpenDSR-Processor-Domain", "X-OpenGDPR-Processor-Domain")
    if not domain:
        raise CallbackRejected("the processor domain header is missing")
    domain = domain.lower().rstrip(".")
    if domain not in (config.allowed_domains or []):
        raise CallbackRejected("the processor domain is not allowed")
    signature_b64 = _header(headers, "X-OpenDSR-Signature", "X-OpenGDPR-Signature")
    if not signature_b64:
        raise CallbackRejected("the signature header is missing")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise CallbackRejected("the signature is not base64") from None
    pem = certificate_pem if certificate_pem is not None else config.certificate_pem
    if not pem:
        raise CallbackRejected("no certificate is at hand for the processor")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        raise CallbackRejected("the processor certificate cannot be read") from None
    now = datetime.now(UTC)
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise CallbackRejected("the processor certificate is not valid now")
    if not _san_matches(cert, domain):
        raise CallbackRejected("the processor certificate does not name the processor domain")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CallbackRejected("the processor certificate does not hold an RSA key")
    try:
        key.verify(signature, raw_body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise CallbackRejected("the signature does not verify") from None
    try:
        data = json.loads(raw_body)
    except ValueError:
        raise CallbackRejected("the body is not JSON", malformed=True) from None
    if not isinstance(data, dict):
        raise CallbackRejected("the body is not a JSON object", malformed=True)
    return data


async def partner_certificate(options: Mapping[str, Any], session: aiohttp.ClientSession | None = None) -> bytes:
    """The partner's certificate: the ``certificate_pem`` option, else fetched from discovery (cached per URL).

    Raises:
        ConfigurationError: The options are wrong.
        ConnectorError: Discovery or the certificate cannot be read.
    """
    config = OpenDsrConfig.parse(options)
    if config.certificate_pem:
        return config.certificate_pem.encode()
    own = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=config.timeout))
    try:
        discovery = await _get_json(session, config.base_url + "discovery", "read discovery", _auth(config))
        url = discovery.get("processor_certificate")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConnectorError("discovery names no processor_certificate URL", retryable=False)
        if url not in _CERT_CACHE:
            try:
                async with session.get(url) as resp:
                    if resp.status != 200:
                        raise ConnectorError(f"fetch the processor certificate: HTTP {resp.status}",
                                             retryable=resp.status in RETRYABLE_STATUS)
                    pem = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ConnectorError(f"fetch the processor certificate: {type(exc).__name__}") from None
            try:
                x509.load_pem_x509_certificate(pem)
            except ValueError:
                raise ConnectorError("the processor certificate is not a PEM certificate", retryable=False) from None
            _CERT_CACHE[url] = pem
        return _CERT_CACHE[url]
    finally:
        if own:
            await session.close()
