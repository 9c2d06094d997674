"""The HTTP side of the SCIM connector: one SCIM 2.0 service provider (RFC 7644), for :mod:`connectors.scim`.

:class:`ScimClient` holds the ``aiohttp`` session (bearer-token auth, SCIM media types, a
timeout per request) and does what every call needs: waiting out rate limits (429, and 503
with ``Retry-After``) up to ``max_retries`` times and at most ``max_retry_wait`` seconds
each, mapping error answers to :class:`ScimError` (status and ``scimType``, never the
server's ``detail``) or, for a refused token, :class:`ConfigurationError`, and following
``startIndex``/``count`` pagination to ``totalResults``. ``open`` also discovers the server:
``/ServiceProviderConfig`` (a smaller ``maxResults`` caps the page size), a search proving
the token, and ``/Schemas`` describing the restriction attribute as a writable boolean.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError
from scim2_models import Context, Error, ListResponse, PatchOp, PatchOperation, Schema, User

from connectors.contract import ConfigurationError, ConnectorError
from connectors.scim_config import ScimConfig

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
"""Statuses a later attempt may get past."""
ERROR_SCHEMA = str(Error.__schema__)
LIST_SCHEMA = str(ListResponse.__schema__)
CONTENT_TYPE = "application/scim+json"
PATCH_CONTEXT = Context.RESOURCE_PATCH_REQUEST
_SCIM_TYPE = re.compile(r"^[A-Za-z]{1,40}$")


class ScimError(ConnectorError):
    """The server answered with an error status; ``status`` and ``scim_type`` say which."""

    def __init__(self, message: str, *, status: int, scim_type: str | None) -> None:
        super().__init__(message, retryable=status in RETRYABLE_STATUS)
        self.status = status
        self.scim_type = scim_type


def get_attribute(node: Any, key: str) -> Any:
    """``node[key]`` with SCIM's case-insensitive attribute names (None when absent)."""
    if not isinstance(node, Mapping):
        return None
    if key in node:
        return node[key]
    folded = key.casefold()
    return next((v for k, v in node.items() if k.casefold() == folded), None)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


class ScimClient:
    """One SCIM service provider over HTTP, for the connector named ``name``."""

    def __init__(self, name: str, config: ScimConfig) -> None:
        """Keep the options and the token (no connection yet).

        Raises:
            ConfigurationError: The token is not at hand.
        """
        self.name = name
        self.config = config
        self._token = config.resolve_token()
        self._session: aiohttp.ClientSession | None = None
        self.page_size = config.page_size
        """Resources asked per page: ``page_size``, capped by the server's ``maxResults``."""

    async def open(self) -> None:
        """Start the HTTP session; read ``/ServiceProviderConfig``, check the token and the restriction attribute.

        Raises:
            ConfigurationError: The token is refused, or the restriction attribute is not a
                writable boolean of the server's schemas.
            ConnectorError: The server cannot be reached (retryable).
        """
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}", "Accept": f"{CONTENT_TYPE}, application/json"},
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
        )
        try:
            status, spc = await self.call("GET", "/ServiceProviderConfig", "read the service provider config",
                                          ok_missing=True, also_ok=(501,))
            if status == 200 and spc:
                most = get_attribute(get_attribute(spc, "filter"), "maxResults")
                if isinstance(most, int) and most > 0:
                    self.page_size = min(self.page_size, most)
            # Discovery endpoints may be public: a search that matches no one proves the token.
            try:
                await self.call("GET", "/Users", "check the token", params={
                    "filter": 'userName eq "dsr-connection-check"', "count": "1", "attributes": "id"})
            except ScimError as exc:
                if exc.status != 403:
                    raise
                raise ConfigurationError(f"{self.name}: check the token failed: the token may not read /Users "
                                         "(403)") from None
            await self._check_restriction()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _check_restriction(self) -> None:
        restriction = self.config.restriction
        if restriction is None:
            return
        urn, attr = restriction
        where = f"{self.name}: restriction_attribute"
        status, body = await self.call("GET", f"/Schemas/{quote(urn, safe=':')}", "read the schemas",
                                       ok_missing=True, also_ok=(501,))
        if status == 501:  # the server does not describe its schemas: trust the option
            return
        if status == 404 or body is None:
            raise ConfigurationError(f"{where}: the server's /Schemas does not list {urn}")
        try:
            schema = Schema.model_validate(body)
        except ValidationError:
            raise ConfigurationError(f"{where}: the server's description of {urn} is not a SCIM schema") from None
        found = next((a for a in schema.attributes or () if (a.name or "").casefold() == attr.casefold()), None)
        if found is None:
            raise ConfigurationError(f"{where}: schema {urn} has no attribute {attr}")
        kind = getattr(found.type, "value", found.type)
        mutability = getattr(found.mutability, "value", found.mutability)
        if kind != "boolean" or found.multi_valued:
            raise ConfigurationError(f"{where}: {attr} is {'multi-valued ' if found.multi_valued else ''}{kind}, "
                                     "not a single boolean")
        if mutability in ("readOnly", "immutable"):
            raise ConfigurationError(f"{where}: {attr} is {mutability}")

    # ---- HTTP -----------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        ok_missing: bool = False,
        also_ok: Iterable[int] = (),
    ) -> tuple[int, dict[str, Any] | None]:
        """One request, waiting out rate limits; returns (status, JSON body or None).

        ``ok_missing`` accepts 404 (and 410) as an answer instead of an error.

        Raises:
            ConnectorError: The server answered with an error, or could not be reached.
        """
        if self._session is None:
            raise ConnectorError(f"{self.name}: call open() first", retryable=False)
        url = self.config.base_url + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": CONTENT_TYPE} if data is not None else None
        accepted = {200, 201, 204, *also_ok, *((404, 410) if ok_missing else ())}
        attempt = 0
        while True:
            try:
                async with self._session.request(method, url, params=params, data=data, headers=headers) as resp:
                    status, raw, retry_after = resp.status, await resp.read(), resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:  # str(exc) may hold the URL and its filter
                raise ConnectorError(f"{self.name}: {operation} failed: {type(exc).__name__}") from None
            parsed = self._json(raw)
            if status in accepted:
                if status in (200, 201) and raw.strip() and parsed is None:
                    raise ConnectorError(f"{self.name}: {operation}: the server's answer is not JSON", retryable=False)
                return status, parsed
            wait = _retry_after(retry_after)
            if status == 429 or (status == 503 and wait is not None):
                wait = min(2.0**attempt, self.config.max_retry_wait) if wait is None else wait
                if attempt >= self.config.max_retries:
                    raise ScimError(f"{self.name}: {operation} failed: still rate limited ({status}) after "
                                    f"{attempt + 1} tries", status=status, scim_type=None)
                if wait > self.config.max_retry_wait:
                    raise ScimError(f"{self.name}: {operation} failed: rate limited ({status}), Retry-After "
                                    f"{wait:.0f} s exceeds max_retry_wait", status=status, scim_type=None)
                attempt += 1
                await asyncio.sleep(wait)
                continue
            raise self._failure(operation, status, parsed)

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any] | None:
        try:
            value = json.loads(raw) if raw.strip() else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _failure(self, operation: str, status: int, body: dict[str, Any] | None) -> ConnectorError:
        """The error for an unexpected answer: status and scimType, never the server's ``detail``."""
        scim_type = None
        is_scim = body is not None and ERROR_SCHEMA in (body.get("schemas") or ())
        if is_scim:
            try:
                found = Error.model_validate(body).scim_type
            except ValidationError:
                found = None
            scim_type = found if found and _SCIM_TYPE.match(str(found)) else None
        kind = (f"SCIM error {status}" if is_scim else f"HTTP {status}") + (f" ({scim_type})" if scim_type else "")
        if status == 401:
            return ConfigurationError(f"{self.name}: {operation} failed: the server refused the bearer token ({kind})")
        return ScimError(f"{self.name}: {operation} failed: {kind}", status=status, scim_type=scim_type)

    # ---- search ---------------------------------------------------------------------------

    async def pages(
        self, endpoint: str, filter: str, attributes: Iterable[str] = ()
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The resources of ``endpoint`` matching ``filter``, one list per page.

        Follows ``startIndex`` by the number of resources each page actually held (a server may
        return fewer than ``count``) until ``totalResults`` is reached or a page is empty.
        """
        start = 1
        params = {"filter": filter, "count": str(self.page_size)}
        if attrs := ",".join(attributes):
            params["attributes"] = attrs
        while True:
            _, body = await self.call("GET", f"/{endpoint}", f"search /{endpoint}",
                                      params={**params, "startIndex": str(start)})
            if body is None or LIST_SCHEMA not in (body.get("schemas") or ()):
                raise ConnectorError(f"{self.name}: search /{endpoint}: the answer is not a ListResponse",
                                     retryable=False)
            resources = [r for r in body.get("Resources") or () if isinstance(r, dict)]
            if resources:
                yield resources
            total = body.get("totalResults")
            start += len(resources)
            if not resources or not isinstance(total, int) or start > total:
                return

    async def search(self, endpoint: str, filter: str, attributes: Iterable[str] = ()) -> AsyncIterator[dict]:
        """The resources of ``endpoint`` matching ``filter``, every page."""
        async for page in self.pages(endpoint, filter, attributes):
            for resource in page:
                yield resource

    # ---- resources ------------------------------------------------------------------------

    async def user(self, uid: str, attributes: Iterable[str]) -> dict[str, Any] | None:
        """One account by id, or None when it is gone."""
        status, body = await self.call("GET", f"/Users/{quote(uid, safe='')}", "read a user", ok_missing=True,
                                       params={"attributes": ",".join(attributes)})
        return None if status in (404, 410) else body or {}

    async def patch(self, endpoint: str, rid: str, operation: str, patch: Mapping[str, Any]) -> bool:
        """Send a PatchOp; False when the resource is gone."""
        status, _ = await self.call("PATCH", f"/{endpoint}/{quote(rid, safe='')}", operation, ok_missing=True,
                                    body=patch)
        return status not in (404, 410)

    async def set_user(self, uid: str, operation: str, path: str, value: Any) -> bool:
        """Replace one attribute of an account; False when the account is gone.

        Core attributes go through scim2-models' ``PatchOp[User]``, which checks the path; a
        provider's extension attribute has no model here, so its PatchOp is written as is.
        """
        if path.startswith("urn:"):
            patch = {"schemas": [str(PatchOp.__schema__)],
                     "Operations": [{"op": "replace", "path": path, "value": value}]}
        else:
            patch = PatchOp[User](operations=[PatchOperation[User](
                op=PatchOperation.Op.replace_, path=path, value=value)]).model_dump(scim_ctx=PATCH_CONTEXT)
        return await self.patch("Users", uid, operation, patch)

    async def delete(self, endpoint: str, rid: str, operation: str) -> None:
        """Delete a resource; one already gone counts as deleted."""
        await self.call("DELETE", f"/{endpoint}/{quote(rid, safe='')}", operation, ok_missing=True)
