"""A directory over LDAP v3 (OpenLDAP, Active Directory, 389-DS): ``type = "ldap"``.

Finds the subject's entries by mail (``user_filter``) or user id (``user_id_filter``),
exports their attributes (``export_attributes``, never passwords) and group memberships,
erases them (out of every group first, then the entry deleted or, with
``on_erase = "disable"``, kept and disabled), deactivates them (disabled, nothing deleted)
and, when ``restriction`` is configured, marks processing as restricted.

Collections: ``users`` (the subject's entries) and ``groups`` (their memberships: one row
per entry and group). The blocking ``ldap3`` client runs in a worker thread, one connection
per operation, so calls made concurrently never share a socket.

OpenLDAP (the options marked required are; the others show their default, or an example where marked)::

    [systems.directory]
    type = "ldap"
    url = "ldaps://ldap.example.com"            # or ldap://host:389; required
    bind_dn = "cn=dsr,ou=services,dc=example,dc=com"   # required (Active Directory: also dsr@example.com)
    password_env = "DIRECTORY_PASSWORD"         # required (or `password`, for tests only)
    base_dn = "ou=people,dc=example,dc=com"     # required: where users are searched
    group_base_dn = "ou=groups,dc=example,dc=com"      # default: base_dn
    user_filter = "(&(objectClass=inetOrgPerson)(mail={email}))"     # {email} is replaced, escaped
    user_id_filter = "(&(objectClass=inetOrgPerson)(uid={user_id}))"  # uid: uid_attribute
    uid_attribute = "uid"
    group_member_attribute = "member"           # DN-valued (member, uniqueMember) or memberUid
    export_attributes = ["cn", "sn", "givenName", "mail", "uid", "telephoneNumber", "title", "description"]
    on_erase = "delete"                         # or "disable": keep the entry, disabled, in no group
    disabled_ground = "Directory account kept disabled by the organisation's policy"   # evidence for "disable"
    disable = {attribute = "pwdAccountLockedTime", value = "000001010000Z"}   # example: with ppolicy
    restriction = {attribute = "employeeType", value = "dsr-restricted {reference}"}   # example; default none
    empty_group_member = "cn=nobody,dc=example,dc=com"   # example; default none (see below)
    ca_file = "/etc/ssl/certs/directory-ca.pem"          # example; default: the system's CAs
    timeout = 10                                          # seconds to connect and per answer

Disabling: with ``value`` the value is added to the attribute (replacing it only where the
attribute is single-valued), so nothing the entry held is lost; the entry counts as
disabled while the attribute holds the value. The default,
``{attribute = "description", value = "dsr: account disabled"}``, works on any
``inetOrgPerson`` but only marks the entry: applications must honour it. On OpenLDAP with
the ppolicy overlay (and a policy with ``pwdLockout: TRUE``), ``pwdAccountLockedTime =
"000001010000Z"`` locks the account for real: binds fail until an administrator removes it.
On Active Directory set a bit instead of a value: ``disable = {attribute =
"userAccountControl", flag = 2}`` (ACCOUNTDISABLE) ORs bit 2 into the current value, keeping
the other flags. Active Directory otherwise needs::

    user_filter = "(&(objectCategory=person)(objectClass=user)(mail={email}))"
    user_id_filter = "(&(objectCategory=person)(objectClass=user)(sAMAccountName={user_id}))"
    uid_attribute = "sAMAccountName"
    export_attributes = ["cn", "sn", "givenName", "mail", "sAMAccountName", "userPrincipalName",
                         "telephoneNumber", "title", "department", "description"]

Restriction: ``value`` is added on restrict and removed on lift; with ``{reference}`` in it
each restriction has its own value (on a multi-valued attribute), so lifting one leaves the
others in place.

Groups whose schema requires a member (``groupOfNames``) cannot lose their last one: set
``empty_group_member`` to a DN to put in its place, or the erasure stops with a clear error
naming the group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ldap3
from ldap3.core import exceptions as lx

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
from connectors.ldap_config import LdapConfig
from connectors.ldap_ops import Entry, LdapOperations, cell, dn_key

USERS, GROUPS = "users", "groups"
APPLY_BATCH = 100


class LdapConnector(LdapOperations, Connector):
    """A directory over LDAP; see the module docstring for the options."""

    type_name = "ldap"

    def __init__(self, name: str, config: LdapConfig) -> None:
        """Keep the validated configuration; connections are made per operation."""
        super().__init__(name)
        self.config = config
        caps = {Capability.LOCATE, Capability.EXPORT, Capability.ERASE, Capability.DEACTIVATE}
        if config.restriction is not None:
            caps.add(Capability.RESTRICT)
        self.capabilities = frozenset(caps)

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> LdapConnector:
        """Build from the TOML options.

        Raises:
            ConfigurationError: An option is missing or wrong (one line).
        """
        try:
            return cls(name, LdapConfig.parse(options))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{name}: {exc}") from None

    # ---- the capabilities --------------------------------------------------------------------

    async def open(self) -> None:
        """Bind once and check that ``base_dn`` and ``group_base_dn`` exist.

        Raises:
            ConfigurationError: The bind is refused or a base DN does not exist.
            ConnectorError: The server cannot be reached (retryable).
        """
        def check(conn: ldap3.Connection) -> None:
            for option, dn in (("base_dn", self.config.base_dn), ("group_base_dn", self.config.group_base_dn)):
                if dn is not None and self._read(conn, dn, []) is None:
                    raise ConfigurationError(f"{self.name}: {option} {dn} does not exist")

        await self._run("open", check)

    async def locate(self, subject: Subject) -> LocateOutcome:
        """Count the subject's entries (``users``) and their group memberships (``groups``)."""
        def work(conn: ldap3.Connection) -> dict[str, int]:
            users = self._users(conn, subject)
            return {USERS: len(users), GROUPS: len(self._memberships(conn, users))}

        found = await self._run("locate", work)
        return LocateOutcome(found={c: n for c, n in found.items() if n})

    async def export(self, subject: Subject, sink: ExportSink) -> ExportOutcome:
        """Write the entries' ``export_attributes`` (``users``) and their groups (``groups``)."""
        def work(conn: ldap3.Connection) -> tuple[list[Entry], list[tuple[Entry, Entry, str]]]:
            users = self._users(conn, subject)
            return users, self._memberships(conn, users)

        users, memberships = await self._run("export", work)
        exported: dict[str, int] = {}
        if users:
            fields = ["dn", *self.config.export_attributes]
            async with sink.collection(USERS, fields) as writer:
                for user in users:
                    await writer.write({"dn": user.dn, **{a: cell(user.values(a))
                                                          for a in self.config.export_attributes}})
            exported[USERS] = len(users)
        if memberships:
            async with sink.collection(GROUPS, ["user_dn", "group_dn", "group_cn"]) as writer:
                for user, group, _ in memberships:
                    await writer.write({"user_dn": user.dn, "group_dn": group.dn,
                                        "group_cn": cell(group.values("cn"))})
            exported[GROUPS] = len(memberships)
        return ExportOutcome(exported=exported)

    def _plan(self, conn: ldap3.Connection, subject: Subject) -> list[PlanItem]:
        """Memberships first (removed before the entry goes), then one item per entry."""
        users = self._users(conn, subject)
        attr = self.config.group_member_attribute
        items = [PlanItem(collection=GROUPS, key={"dn": group.dn, "attribute": attr, "value": value}, action="delete")
                 for _, group, value in self._memberships(conn, users)]
        for user in users:
            if self.config.on_erase == "delete":
                items.append(PlanItem(collection=USERS, key={"dn": user.dn}, action="delete"))
            else:
                items.append(PlanItem(collection=USERS, key={"dn": user.dn}, action="retain",
                                      ground=self.config.disabled_ground, assignments={"disable": True}))
        return items

    def _apply(self, conn: ldap3.Connection, items: list[PlanItem]) -> None:
        for item in items:
            dn = str(item.key["dn"])
            if item.collection == GROUPS:
                self._remove_member(conn, dn, str(item.key["attribute"]), str(item.key["value"]))
            elif item.action == "delete":
                try:
                    conn.delete(dn)
                except lx.LDAPNoSuchObjectResult:
                    pass  # deleted by an earlier run
                except lx.LDAPNotAllowedOnNotLeafResult:
                    raise ConnectorError(f"{self.name}: erase: an entry of the subject has child entries and "
                                         "cannot be deleted; use on_erase = \"disable\"", retryable=False) from None
            else:
                self._disable(conn, dn)

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Plan once (unless ``plan`` is sealed), then remove memberships and delete or disable the entries.

        Counts come from the whole plan, so a second run reports the same ones;
        ``deleted`` counts entries deleted and memberships removed, a disabled entry is
        ``retained`` with ``disabled_ground``.
        """
        if not await plan.has_plan():
            items = await self._run("erase", self._plan, subject)
            await plan.save(items)
            await plan.seal()
            progress({"planned": len(items)})
        batches = rows = 0
        async for batch in plan.pending(APPLY_BATCH):
            await self._run("erase", self._apply, [item for _, item in batch])
            await plan.mark_done([item_id for item_id, _ in batch])
            batches, rows = batches + 1, rows + len(batch)
            progress({"batches": batches, "rows": rows})
        deleted: dict[str, int] = {}
        kept: dict[str, int] = {}
        async for item in plan.items():
            counts = deleted if item.action == "delete" else kept
            counts[item.collection] = counts.get(item.collection, 0) + 1
        retained = [RetainedItem(collection=c, count=n, ground=self.config.disabled_ground) for c, n in kept.items()]
        return ErasureOutcome(deleted=deleted, retained=retained, batches=batches)

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Look again: planned and newly found entries must be gone (or disabled), and in no group.

        Remaining: ``users`` entries still there (with ``on_erase = "delete"``) or not
        disabled, ``groups`` memberships of planned or found entries. Retained: the
        disabled entries.
        """
        planned_users: list[str] = []
        planned_values: set[str] = set()
        async for item in plan.items():
            if item.collection == USERS:
                planned_users.append(str(item.key["dn"]))
            else:
                planned_values.add(str(item.key["value"]))

        def work(conn: ldap3.Connection) -> tuple[int, int, int]:
            existing = {dn_key(e.dn): e for e in self._users(conn, subject)}
            for dn in planned_users:
                if dn_key(dn) not in existing and (entry := self._read(conn, dn, self._attributes())) is not None:
                    existing[dn_key(dn)] = entry
            values = set(planned_values)
            if not self.config.member_by_uid:
                values.update(planned_users)
            for entry in existing.values():
                values.update(self._member_values(entry))
            memberships = {(dn_key(g.dn), v) for v in values for g in self._groups_listing(conn, v)}
            disabled = sum(1 for e in existing.values() if self._is_disabled(e))
            if self.config.on_erase == "delete":
                return len(existing), len(memberships), 0
            return len(existing) - disabled, len(memberships), disabled

        users, groups, kept = await self._run("verify", work)
        remaining = {c: n for c, n in ((USERS, users), (GROUPS, groups)) if n}
        retained = [RetainedItem(collection=USERS, count=kept, ground=self.config.disabled_ground)] if kept else []
        return VerificationOutcome(remaining=remaining, retained=retained)

    async def deactivate(self, subject: Subject) -> ActionOutcome:
        """Disable the subject's entries (``disable``); nothing is deleted, memberships stay."""
        def work(conn: ldap3.Connection) -> int:
            return sum(1 for user in self._users(conn, subject) if self._disable(conn, user.dn))

        count = await self._run("deactivate", work)
        if not count:
            return ActionOutcome()
        return ActionOutcome(changed={USERS: count}, fields=[f"{USERS}.{self.config.disable.attribute}"])

    def _restriction(self, reference: str, what: str) -> tuple[str, str]:
        """The attribute and value marking ``reference``'s restriction."""
        if self.config.restriction is None:
            raise UnsupportedError(f"{self.name} cannot {what}: no restriction is configured")
        return self.config.restriction.attribute, self.config.restriction.value.replace("{reference}", reference)

    async def restrict(self, subject: Subject, reference: str) -> ActionOutcome:
        """Add the restriction value for ``reference`` to the subject's entries.

        Raises:
            UnsupportedError: No ``restriction`` option is configured.
        """
        attribute, value = self._restriction(reference, "restrict processing")

        def work(conn: ldap3.Connection) -> int:
            users = self._users(conn, subject)
            for user in users:
                self._add_value(conn, user.dn, attribute, value)
            return len(users)

        return self._action(await self._run("restrict", work), attribute)

    async def lift_restriction(self, subject: Subject, reference: str) -> ActionOutcome:
        """Remove the restriction value for ``reference``; other values of the attribute stay.

        Raises:
            UnsupportedError: No ``restriction`` option is configured.
        """
        attribute, value = self._restriction(reference, "lift a restriction")

        def work(conn: ldap3.Connection) -> int:
            lifted = 0
            for user in self._users(conn, subject):
                try:
                    conn.modify(user.dn, {attribute: [(ldap3.MODIFY_DELETE, [value])]})
                    lifted += 1
                except lx.LDAPNoSuchAttributeResult:
                    continue  # not restricted by this reference (or lifted already)
            return lifted

        return self._action(await self._run("lift restriction", work), attribute)

    def _action(self, count: int, attribute: str) -> ActionOutcome:
        if not count:
            return ActionOutcome()
        return ActionOutcome(changed={USERS: count}, fields=[f"{USERS}.{attribute}"])
