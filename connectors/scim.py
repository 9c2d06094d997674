"""The SSO directory connector: an identity provider's directory over SCIM 2.0 (RFC 7643, RFC 7644).

Options of a ``[systems.<name>]`` table with ``type = "scim"``::

    [systems.directory]
    type = "scim"
    base_url = "https://idp.example.com/scim/v2"
    token_env = "DIRECTORY_SCIM_TOKEN"        # the bearer token, from the environment
    on_erase = "delete"                       # or "deactivate": the tenant keeps directory accounts
    restriction_attribute = "urn:example:params:scim:schemas:extension:dsr:2.0:User:processingRestricted"
    page_size = 100

    [systems.directory.identities]            # identity type -> User attribute (the default shown)
    email = "emails.value"
    user_id = "userName"

What it does, per capability:

- **locate**: one search per identity the request carries and the options map, e.g.
  ``GET /Users?filter=emails.value eq "x"`` (single ``eq`` filters, which every provider
  supports; no ``or``), results joined by user id; then each user's groups with
  ``GET /Groups?filter=members.value eq "id"``. Counts: ``users`` (accounts) and
  ``groups`` (memberships). Every user the server returns is checked against the
  identity on our side too, so a provider that ignores a filter cannot make us act on
  someone else's account (the call fails instead).
- **export**: collection ``users``, one row per account, one column per attribute the
  accounts hold (core attributes in RFC 7643 §4.1 order, then extensions, values as the
  provider returned them; ``schemas`` and any ``password`` left out); collection ``groups``,
  one row per membership (``id``, ``displayName``, ``externalId`` of the group and the
  ``member`` user id): the group's other members are never read.
- **erase**: planned once into the orchestrator's :class:`~connectors.contract.PlanStore`, so
  that a re-run after the accounts are gone still knows (and reports) what was done, and
  verification can look the planned ids up. With ``on_erase = "delete"``: the user leaves
  each group (``PATCH /Groups/{id}`` removing ``members[value eq "id"]``; unless
  ``remove_memberships = false``), then ``DELETE /Users/{id}``; a 404 means done already.
  With ``on_erase = "deactivate"``: ``PATCH /Users/{id}`` setting ``active`` to false; the
  account and its memberships are reported retained with ``retention_ground``.
- **verify_erasure**: the planned ids and a fresh search: a planned or found account that
  still exists (delete) or is still active (deactivate) remains, as do memberships of
  erased accounts.
- **deactivate**: ``PATCH /Users/{id}`` with ``{"op": "replace", "path": "active", "value": false}``.
- **restrict / lift_restriction** (only with ``restriction_attribute``): sets that boolean
  extension attribute true / false. ``open`` checks the server's ``/Schemas`` describes it
  as a writable, single-valued boolean (when the server serves ``/Schemas`` at all). The
  directory holds one flag per account, so it cannot tell two restriction references
  apart: lifting any reference clears it.

HTTP: bearer-token auth; pagination by ``startIndex``/``count`` following ``totalResults``
(and the page size the server actually returns); 429 (and 503 with ``Retry-After``) are
waited out and retried up to ``max_retries`` times, waiting at most ``max_retry_wait``
seconds each, else a retryable error is left to the orchestrator's retry policy. SCIM error
bodies (``urn:ietf:params:scim:api:messages:2.0:Error``) become :class:`ConnectorError`
naming the operation, the status and the ``scimType``, retryable for 429, 500, 502, 503 and
504; a refused token is a :class:`ConfigurationError`. Messages never hold submitted values
(emails, user names, filters) nor the server's ``detail``, which may echo them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from scim2_models import Context, Error, Group, ListResponse, PatchOp, PatchOperation, Schema, User

from connectors.contract import (
    ActionOutcome,
    Capability,
    ConfigurationError,
    Connector,
    ConnectorError,
    ErasureOutcome,
    ExportOutcome,
    ExportSink,
    LocateOutcome,
    PlanItem,
    PlanStore,
    ProgressReporter,
    RetainedItem,
    Subject,
    UnsupportedError,
    VerificationOutcome,
)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
"""Statuses a later attempt may get past."""
ERROR_SCHEMA = str(Error.__schema__)
LIST_SCHEMA = str(ListResponse.__schema__)
CONTENT_TYPE = "application/scim+json"
PATCH_CONTEXT = Context.RESOURCE_PATCH_REQUEST
USER_COLUMNS = [f.serialization_alias or f.alias or n for n, f in User.model_fields.items()
                if n not in ("schemas", "password")]
"""Core User attributes in RFC 7643 §4.1 order (from scim2-models), minus ``schemas`` and ``password``."""
GROUP_COLUMNS = ["id", "displayName", "externalId", "member"]
_PATH = re.compile(r"^(urn:[A-Za-z0-9.:_-]+:)?[A-Za-z][\w$-]*(\.[A-Za-z][\w$-]*)?$")
_SCIM_TYPE = re.compile(r"^[A-Za-z]{1,40}$")
_PLAN_BATCH = 50


class ScimError(ConnectorError):
    """The server answered with an error status; ``status`` and ``scim_type`` say which."""

    def __init__(self, message: str, *, status: int, scim_type: str | None) -> None:
        super().__init__(message, retryable=status in RETRYABLE_STATUS)
        self.status = status
        self.scim_type = scim_type


def first_error(exc: ValidationError) -> str:
    """The first validation error as ``loc: message`` on one line."""
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return (f"{where}: " if where else "") + str(err["msg"]).splitlines()[0]


class ScimConfig(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "scim"``."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="The SCIM base URL, e.g. https://idp.example.com/scim/v2.")
    token_env: str | None = Field(default=None, description="Environment variable holding the bearer token.")
    token: str | None = Field(default=None, description="The bearer token itself: for tests and development only.")
    identities: dict[str, str] = Field(
        default_factory=lambda: {"email": "emails.value", "user_id": "userName"},
        description="Identity type -> User attribute path compared with ``eq``.")
    on_erase: Literal["delete", "deactivate"] = Field(
        default="delete", description="Delete accounts, or deactivate them where the tenant keeps directory accounts.")
    retention_ground: str = Field(
        default="Tenant policy: directory accounts are kept, deactivated", min_length=1,
        description="The ground recorded for accounts kept by on_erase = deactivate.")
    remove_memberships: bool = Field(default=True, description="On delete, remove the user from its groups first.")
    restriction_attribute: str | None = Field(
        default=None, description="Boolean extension attribute (``urn:...:attribute``) set while restricted.")
    page_size: int = Field(default=100, ge=1, le=1000, description="Resources asked per page (``count``).")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per HTTP request.")
    max_retries: int = Field(default=5, ge=0, le=20, description="Retries of one request answered 429.")
    max_retry_wait: float = Field(default=60.0, ge=0, le=3600, description="Longest Retry-After waited, seconds.")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("identities")
    @classmethod
    def _identities(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("map at least one identity type to a User attribute")
        for kind, path in value.items():
            if not _PATH.match(path):
                raise ValueError(f"{kind}: {path!r} is not a SCIM attribute path")
        return value

    @field_validator("restriction_attribute")
    @classmethod
    def _restriction(cls, value: str | None) -> str | None:
        if value is not None and not (_PATH.match(value) and value.startswith("urn:") and "." not in
                                      value.rsplit(":", 1)[1]):
            raise ValueError("must be an extension attribute path: the schema URN, a colon, the attribute name")
        return value

    @model_validator(mode="after")
    def _check(self) -> ScimConfig:
        if bool(self.token) == bool(self.token_env):
            raise ValueError("set exactly one of token_env (production) or token (tests)")
        return self

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> ScimConfig:
        """Validate the options and that the token is at hand.

        Raises:
            ConfigurationError: The first problem, as ``option: message`` on one line.
        """
        try:
            config = cls.model_validate(dict(options))
        except ValidationError as exc:
            raise ConfigurationError(first_error(exc)) from None
        config.resolve_token()
        return config

    def resolve_token(self) -> str:
        """The bearer token, from the environment unless given directly."""
        value = self.token or os.environ.get(self.token_env or "")
        if not value:
            raise ConfigurationError(f"environment variable {self.token_env} (token_env) is not set")
        return value

    @property
    def restriction(self) -> tuple[str, str] | None:
        """The restriction attribute as (schema URN, attribute name)."""
        if self.restriction_attribute is None:
            return None
        urn, _, attr = self.restriction_attribute.rpartition(":")
        return urn, attr


def _get(node: Any, key: str) -> Any:
    """``node[key]`` with SCIM's case-insensitive attribute names (None when absent)."""
    if not isinstance(node, Mapping):
        return None
    if key in node:
        return node[key]
    folded = key.casefold()
    return next((v for k, v in node.items() if k.casefold() == folded), None)


def values_at(resource: Mapping[str, Any], path: str) -> list[Any]:
    """The values at an attribute path (``emails.value``, ``urn:...:User:employeeNumber``), lists flattened."""
    nodes: list[Any] = [resource]
    if path.startswith("urn:"):
        urn, _, path = path.rpartition(":")
        nodes = [_get(resource, urn)]
    for part in path.split("."):
        found: list[Any] = []
        for node in nodes:
            for item in node if isinstance(node, list) else [node]:
                value = _get(item, part)
                found.extend(value if isinstance(value, list) else [value])
        nodes = [v for v in found if v is not None]
    return nodes


def _top(path: str) -> str:
    """The attribute an attribute path starts at (``emails`` for ``emails.value``), schema URN kept."""
    urn, colon, rest = path.rpartition(":") if path.startswith("urn:") else ("", "", path)
    return urn + colon + rest.split(".")[0]


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


class ScimConnector(Connector):
    """An identity provider's directory over SCIM 2.0: users and their group memberships.

    ``capabilities`` (per instance): locate, export, erase, deactivate; restrict when
    ``restriction_attribute`` is configured.
    """

    type_name = "scim"
    capabilities = frozenset({Capability.LOCATE, Capability.EXPORT, Capability.ERASE, Capability.DEACTIVATE})
    """What every instance can do; an instance with ``restriction_attribute`` adds restrict."""

    def __init__(self, name: str, config: ScimConfig) -> None:
        """Keep the options (no connection yet).

        Raises:
            ConfigurationError: The token is not at hand.
        """
        super().__init__(name)
        self.config = config
        self._token = config.resolve_token()
        self._session: aiohttp.ClientSession | None = None
        self._page_size = config.page_size
        if config.restriction_attribute:
            self.capabilities = self.capabilities | {Capability.RESTRICT}

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> ScimConnector:
        """Build from the options of ``[systems.<name>]``.

        Raises:
            ConfigurationError: One line saying what is wrong with the options.
        """
        try:
            return cls(name, ScimConfig.parse(options))
        except ConfigurationError as exc:
            raise ConfigurationError(f"systems.{name}: {exc}") from None

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
            status, spc = await self._call("GET", "/ServiceProviderConfig", "read the service provider config",
                                           ok_missing=True, also_ok=(501,))
            if status == 200 and spc:
                most = _get(_get(spc, "filter"), "maxResults")
                if isinstance(most, int) and most > 0:
                    self._page_size = min(self._page_size, most)
            # Discovery endpoints may be public: a search that matches no one proves the token.
            try:
                await self._call("GET", "/Users", "check the token", params={
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
        status, body = await self._call("GET", f"/Schemas/{quote(urn, safe=':')}", "read the schemas",
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

    async def _call(
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
        params = {"filter": filter, "count": str(self._page_size)}
        if attrs := ",".join(attributes):
            params["attributes"] = attrs
        while True:
            _, body = await self._call("GET", f"/{endpoint}", f"search /{endpoint}",
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

    async def _users(self, subject: Subject, attributes: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """The subject's accounts by id: one ``eq`` search per mapped identity, each result checked."""
        attributes = list(attributes)
        found: dict[str, dict[str, Any]] = {}
        for kind, path in self.config.identities.items():
            value = subject.identities.get(kind)
            if not value:
                continue
            asked = [*attributes, _top(path)] if attributes else []
            async for user in self.search("Users", f"{path} eq {json.dumps(value)}", asked):
                uid = user.get("id")
                if not isinstance(uid, str) or not uid:
                    raise ConnectorError(f"{self.name}: search /Users: a resource without an id", retryable=False)
                if not any(str(v).casefold() == value.casefold() for v in values_at(user, path)):
                    raise ConnectorError(f"{self.name}: search /Users returned an account whose {path} does not "
                                         "match the filter (does the server support filtering on it?)",
                                         retryable=False)
                found.setdefault(uid, user)
        return found

    async def _memberships(self, user_ids: Iterable[str]) -> list[tuple[dict[str, Any], str]]:
        """(group, user id) for every group listing one of ``user_ids`` as a member (other members never read)."""
        out = []
        for uid in user_ids:
            async for group in self.search("Groups", f"members.value eq {json.dumps(uid)}",
                                           ["id", "displayName", "externalId"]):
                if isinstance(group.get("id"), str):
                    out.append((group, uid))
        return out

    async def _user(self, uid: str, attributes: Iterable[str]) -> dict[str, Any] | None:
        """One account by id, or None when it is gone."""
        status, body = await self._call("GET", f"/Users/{quote(uid, safe='')}", "read a user", ok_missing=True,
                                        params={"attributes": ",".join(attributes)})
        return None if status in (404, 410) else body or {}

    async def _patch(self, endpoint: str, rid: str, operation: str, patch: Mapping[str, Any]) -> bool:
        """Send a PatchOp; False when the resource is gone."""
        status, _ = await self._call("PATCH", f"/{endpoint}/{quote(rid, safe='')}", operation, ok_missing=True,
                                     body=patch)
        return status not in (404, 410)

    async def _set_user(self, uid: str, operation: str, path: str, value: Any) -> bool:
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
        return await self._patch("Users", uid, operation, patch)

    # ---- rights ---------------------------------------------------------------------------

    async def locate(self, subject: Subject) -> LocateOutcome:
        """Count the subject's accounts (``users``) and group memberships (``groups``)."""
        users = await self._users(subject, ["id"])
        memberships = await self._memberships(users)
        found = {"users": len(users), "groups": len(memberships)}
        return LocateOutcome(found={c: n for c, n in found.items() if n})

    async def export(self, subject: Subject, sink: ExportSink) -> ExportOutcome:
        """Write the subject's accounts (``users``) and memberships (``groups``) into ``sink``."""
        users = await self._users(subject)
        exported: dict[str, int] = {}
        if not users:
            return ExportOutcome()
        present = {k for user in users.values() for k in user}
        extra = [k for user in users.values() for k in user
                 if k not in USER_COLUMNS and k not in ("schemas", "password")]
        columns = [c for c in USER_COLUMNS if c in present] + list(dict.fromkeys(extra))
        async with sink.collection("users", columns) as writer:
            for user in users.values():
                await writer.write({c: user.get(c) for c in columns})
        exported["users"] = len(users)
        memberships = await self._memberships(users)
        if memberships:
            async with sink.collection("groups", GROUP_COLUMNS) as writer:
                for group, uid in memberships:
                    await writer.write({"id": group["id"], "displayName": group.get("displayName"),
                                        "externalId": group.get("externalId"), "member": uid})
            exported["groups"] = len(memberships)
        return ExportOutcome(exported=exported)

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Plan once (memberships, then accounts), then apply the pending items; counts come from the whole plan.

        Progress reports are ``{"planned": n}``, then ``{"applied": m}`` per batch.
        """
        if not await plan.has_plan():
            items = await self._plan(subject)
            await plan.save(items)
            await plan.seal()
            progress({"planned": len(items)})
        applied = batches = 0
        async for batch in plan.pending(_PLAN_BATCH):
            for item_id, item in batch:
                await self._apply(item)
                await plan.mark_done([item_id])
            applied, batches = applied + len(batch), batches + 1
            progress({"applied": applied})
        deleted: Counter[str] = Counter()
        retained: Counter[str] = Counter()
        async for item in plan.items():
            (deleted if item.action == "delete" else retained)[item.collection] += 1
        return ErasureOutcome(deleted=dict(deleted), retained=self._retained(retained), batches=batches)

    def _retained(self, counts: Mapping[str, int]) -> list[RetainedItem]:
        return [RetainedItem(collection=c, count=n, ground=self.config.retention_ground) for c, n in counts.items()
                if n]

    async def _plan(self, subject: Subject) -> list[PlanItem]:
        users = await self._users(subject, ["id"])
        memberships = await self._memberships(users)
        items = []
        for group, uid in memberships:
            key = {"id": group["id"], "member": uid}
            if self.config.on_erase == "deactivate":
                items.append(PlanItem(collection="groups", key=key, action="retain",
                                      ground=self.config.retention_ground))
            elif self.config.remove_memberships:
                items.append(PlanItem(collection="groups", key=key, action="delete"))
        for uid in users:
            if self.config.on_erase == "deactivate":
                items.append(PlanItem(collection="users", key={"id": uid}, action="update",
                                      assignments={"active": False}, ground=self.config.retention_ground))
            else:
                items.append(PlanItem(collection="users", key={"id": uid}, action="delete"))
        return items

    async def _apply(self, item: PlanItem) -> None:
        """Apply one plan item; an account or group already gone counts as done."""
        rid = str(item.key["id"])
        if item.collection == "groups" and item.action == "delete":
            member = str(item.key["member"])
            try:
                patch = PatchOp[Group](operations=[PatchOperation[Group](
                    op=PatchOperation.Op.remove, path=f"members[value eq {json.dumps(member)}]")]
                ).model_dump(scim_ctx=PATCH_CONTEXT)
            except ValidationError:
                raise ConnectorError(f"{self.name}: a user id cannot be written in a SCIM filter",
                                     retryable=False) from None
            try:
                await self._patch("Groups", rid, "remove a group membership", patch)
            except ScimError as exc:
                if exc.scim_type != "noTarget":  # noTarget: no such member any more, so done
                    raise
        elif item.collection == "users" and item.action == "delete":
            await self._call("DELETE", f"/Users/{quote(rid, safe='')}", "delete a user", ok_missing=True)
        elif item.collection == "users" and item.action == "update":
            await self._set_user(rid, "deactivate a user", "active", False)

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Look up the planned accounts and search again: what still exists (or is still active) remains."""
        planned: list[str] = []
        async for item in plan.items():
            if item.collection == "users":
                planned.append(str(item.key["id"]))
        found = await self._users(subject, ["id", "active"])
        remaining: Counter[str] = Counter()
        kept: list[str] = []
        for uid in dict.fromkeys([*planned, *found]):
            user = found.get(uid) or await self._user(uid, ["id", "active"])
            if user is None:
                continue
            if self.config.on_erase == "deactivate" and _get(user, "active") is False:
                kept.append(uid)
            else:
                remaining["users"] += 1
        erased = [uid for uid in dict.fromkeys([*planned, *found]) if uid not in kept]
        if self.config.on_erase == "delete" and self.config.remove_memberships:
            remaining["groups"] += len(await self._memberships(erased))
        retained = Counter({"users": len(kept), "groups": len(await self._memberships(kept))})
        return VerificationOutcome(remaining={c: n for c, n in remaining.items() if n},
                                   retained=self._retained(retained))

    async def deactivate(self, subject: Subject) -> ActionOutcome:
        """Set ``active`` to false on the subject's accounts; nothing is deleted."""
        changed = 0
        for uid in await self._users(subject, ["id"]):
            changed += await self._set_user(uid, "deactivate a user", "active", False)
        return ActionOutcome(changed={"users": changed} if changed else {}, fields=["users.active"] if changed else [])

    def _restriction(self) -> str:
        if self.config.restriction_attribute is None:
            raise UnsupportedError(f"{self.name} has no restriction_attribute")
        return self.config.restriction_attribute

    async def restrict(self, subject: Subject, reference: str) -> ActionOutcome:
        """Set the restriction attribute true on the subject's accounts (every reference shares the one flag)."""
        path = self._restriction()
        changed = 0
        for uid in await self._users(subject, ["id"]):
            changed += await self._set_user(uid, "restrict a user", path, True)
        return ActionOutcome(changed={"users": changed} if changed else {},
                             fields=[f"users.{path}"] if changed else [])

    async def lift_restriction(self, subject: Subject, reference: str) -> ActionOutcome:
        """Set the restriction attribute false where it is true; counts the accounts released."""
        path = self._restriction()
        changed = 0
        for uid, user in (await self._users(subject, ["id", path])).items():
            if any(v is True for v in values_at(user, path)):
                changed += await self._set_user(uid, "lift a restriction", path, False)
        return ActionOutcome(changed={"users": changed} if changed else {},
                             fields=[f"users.{path}"] if changed else [])
