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

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from scim2_models import Group, PatchOp, PatchOperation, User

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
from connectors.scim_client import PATCH_CONTEXT, ScimClient, ScimError, get_attribute
from connectors.scim_config import ScimConfig

USER_COLUMNS = [f.serialization_alias or f.alias or n for n, f in User.model_fields.items()
                if n not in ("schemas", "password")]
"""Core User attributes in RFC 7643 §4.1 order (from scim2-models), minus ``schemas`` and ``password``."""
GROUP_COLUMNS = ["id", "displayName", "externalId", "member"]
_PLAN_BATCH = 50


def values_at(resource: Mapping[str, Any], path: str) -> list[Any]:
    """The values at an attribute path (``emails.value``, ``urn:...:User:employeeNumber``), lists flattened."""
    nodes: list[Any] = [resource]
    if path.startswith("urn:"):
        urn, _, path = path.rpartition(":")
        nodes = [get_attribute(resource, urn)]
    for part in path.split("."):
        found: list[Any] = []
        for node in nodes:
            for item in node if isinstance(node, list) else [node]:
                value = get_attribute(item, part)
                found.extend(value if isinstance(value, list) else [value])
        nodes = [v for v in found if v is not None]
    return nodes


def _top(path: str) -> str:
    """The attribute an attribute path starts at (``emails`` for ``emails.value``), schema URN kept."""
    urn, colon, rest = path.rpartition(":") if path.startswith("urn:") else ("", "", path)
    return urn + colon + rest.split(".")[0]


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
        self._client = ScimClient(name, config)
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
        await self._client.open()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._client.close()

    # ---- search ---------------------------------------------------------------------------

    async def pages(
        self, endpoint: str, filter: str, attributes: Iterable[str] = ()
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The resources of ``endpoint`` matching ``filter``, one list per page (see :meth:`ScimClient.pages`)."""
        async for page in self._client.pages(endpoint, filter, attributes):
            yield page

    async def search(self, endpoint: str, filter: str, attributes: Iterable[str] = ()) -> AsyncIterator[dict]:
        """The resources of ``endpoint`` matching ``filter``, every page."""
        async for resource in self._client.search(endpoint, filter, attributes):
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
                await self._client.patch("Groups", rid, "remove a group membership", patch)
            except ScimError as exc:
                if exc.scim_type != "noTarget":  # noTarget: no such member any more, so done
                    raise
        elif item.collection == "users" and item.action == "delete":
            await self._client.delete("Users", rid, "delete a user")
        elif item.collection == "users" and item.action == "update":
            await self._client.set_user(rid, "deactivate a user", "active", False)

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
            user = found.get(uid) or await self._client.user(uid, ["id", "active"])
            if user is None:
                continue
            if self.config.on_erase == "deactivate" and get_attribute(user, "active") is False:
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
            changed += await self._client.set_user(uid, "deactivate a user", "active", False)
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
            changed += await self._client.set_user(uid, "restrict a user", path, True)
        return ActionOutcome(changed={"users": changed} if changed else {},
                             fields=[f"users.{path}"] if changed else [])

    async def lift_restriction(self, subject: Subject, reference: str) -> ActionOutcome:
        """Set the restriction attribute false where it is true; counts the accounts released."""
        path = self._restriction()
        changed = 0
        for uid, user in (await self._users(subject, ["id", path])).items():
            if any(v is True for v in values_at(user, path)):
                changed += await self._client.set_user(uid, "lift a restriction", path, False)
        return ActionOutcome(changed={"users": changed} if changed else {},
                             fields=[f"users.{path}"] if changed else [])
