"""An OpenDSR 2.0 processor for the tests: discovery, requests, status, cancel, and signed callbacks.

Its RSA key and self-signed certificate (subject alternative name = its domain) are generated here with
``cryptography``; ``sign`` and ``callback_headers`` make callbacks as the real partner would.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

DOMAIN = "partner.example"


def make_key() -> rsa.RSAPrivateKey:
    """A fresh RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed(key: rsa.RSAPrivateKey, domain: str) -> bytes:
    """A self-signed certificate (PEM) for ``domain`` (CN and SAN)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def sign(key: rsa.RSAPrivateKey, body: bytes) -> str:
    """Base64 of the RSA PKCS#1 v1.5 signature over SHA-256 of ``body``."""
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


class Partner:
    """The processor's state and its HTTP application."""

    def __init__(self, domain: str = DOMAIN, *, identities: list[dict[str, str]] | None = None,
                 legacy: bool = False) -> None:
        self.domain = domain
        self.key = make_key()
        self.certificate = self_signed(self.key, domain)
        self.identities = identities if identities is not None else [
            {"identity_type": "email", "identity_format": "raw"},
            {"identity_type": "controller_customer_id", "identity_format": "raw"},
        ]
        self.legacy = legacy
        self.requests: dict[str, dict[str, Any]] = {}
        self.posts: list[dict[str, Any]] = []
        self.certificate_fetches = 0
        self.url = ""

    @property
    def requests_path(self) -> str:
        return "opengdpr_requests" if self.legacy else "requests"

    def set_status(self, reference: str, status: str) -> None:
        self.requests[reference]["request_status"] = status

    def status_document(self, reference: str, callback_url: str | None = None) -> dict[str, Any]:
        doc = {"controller_id": "dsr-orchestrator", "expected_completion_time": "2030-01-01T00:00:00Z",
               "subject_request_id": reference, "request_status": self.requests[reference]["request_status"],
               "api_version": "2.0", "results_url": None, "results_count": 0}
        if callback_url is not None:
            doc["status_callback_url"] = callback_url
        return doc

    def callback(self, reference: str, *, legacy: bool = False, key: rsa.RSAPrivateKey | None = None,
                 domain: str | None = None) -> tuple[bytes, dict[str, str]]:
        """A signed callback for ``reference`` to its first callback URL: (raw body, headers)."""
        url = self.requests[reference]["status_callback_urls"][0]
        body = json.dumps(self.status_document(reference, url)).encode()
        return body, self.headers(body, legacy=legacy, key=key, domain=domain)

    def headers(self, body: bytes, *, legacy: bool = False, key: rsa.RSAPrivateKey | None = None,
                domain: str | None = None) -> dict[str, str]:
        prefix = "X-OpenGDPR" if legacy else "X-OpenDSR"
        return {f"{prefix}-Processor-Domain": domain or self.domain,
                f"{prefix}-Signature": sign(key or self.key, body), "Content-Type": "application/json"}

    def app(self) -> web.Application:
        app = web.Application()
        base = "/v1/"
        app.router.add_get(base + "discovery", self._discovery)
        app.router.add_get(base + "cert.pem", self._cert)
        app.router.add_post(base + self.requests_path, self._create)
        app.router.add_get(base + self.requests_path + "/{id}", self._get)
        app.router.add_delete(base + self.requests_path + "/{id}", self._delete)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "api_version": "2.0", "supported_identities": self.identities,
            "supported_subject_request_types": ["erasure", "access", "portability"],
            "processor_certificate": f"{self.url}/v1/cert.pem"})

    async def _cert(self, request: web.Request) -> web.Response:
        self.certificate_fetches += 1
        return web.Response(body=self.certificate, content_type="application/x-pem-file")

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posts.append(body)
        reference = body["subject_request_id"]
        uuid.UUID(reference)
        if reference in self.requests:
            return web.json_response({"error": "duplicate"}, status=409)
        self.requests[reference] = {**body, "request_status": "pending"}
        return web.json_response({"controller_id": "dsr-orchestrator", "subject_request_id": reference,
                                  "received_time": datetime.now(UTC).isoformat(),
                                  "expected_completion_time": "2030-01-01T00:00:00Z",
                                  "encoded_request": "", "processor_signature": ""}, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        reference = request.match_info["id"]
        if reference not in self.requests:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(self.status_document(reference))

    async def _delete(self, request: web.Request) -> web.Response:
        reference = request.match_info["id"]
        if reference not in self.requests:
            return web.json_response({"error": "not found"}, status=404)
        if self.requests[reference]["request_status"] != "pending":
            return web.json_response({"error": "not pending"}, status=405)
        self.requests[reference]["request_status"] = "cancelled"
        return web.json_response(self.status_document(reference), status=202)


@asynccontextmanager
async def running_partner(partner: Partner) -> AsyncIterator[Partner]:
    """Serve ``partner`` on a free loopback port; ``partner.url`` is its origin."""
    runner = web.AppRunner(partner.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    partner.url = f"http://127.0.0.1:{port}"
    try:
        yield partner
    finally:
        await runner.cleanup()
