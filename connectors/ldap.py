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

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as lx
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

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

T = TypeVar("T")

DEFAULT_EXPORT = ["cn", "sn", "givenName", "mail", "uid", "telephoneNumber", "title", "description"]
SECRET_ATTRIBUTES = frozenset({
    "userpassword", "authpassword", "unicodepwd", "dbcspwd", "ntpwdhistory", "lmpwdhistory",
    "supplementalcredentials", "sambantpassword", "sambalmpassword", "pwdhistory",
})
"""Attributes holding credentials: never requested, whatever ``export_attributes`` says."""
USERS, GROUPS = "users", "groups"
PAGE_SIZE = 500
APPLY_BATCH = 100
PAGED_RESULTS = "1.2.840.113556.1.4.319"
_RETRYABLE_RESULTS = {3, 51, 52}  # timeLimitExceeded, busy, unavailable


class DisableConfig(BaseModel):
    """``disable``: how an entry is disabled; ``value`` for OpenLDAP and others, ``flag`` for Active Directory."""

    model_config = ConfigDict(extra="forbid")

    attribute: str = Field(min_length=1, description="The attribute written, e.g. pwdAccountLockedTime.")
    value: str | None = Field(default=None, min_length=1, description="The value added (e.g. 000001010000Z).")
    flag: int | None = Field(default=None, ge=1, description="Bits ORed into an integer attribute (AD: 2).")

    @model_validator(mode="after")
    def _one(self) -> DisableConfig:
        if (self.value is None) == (self.flag is None):
            raise ValueError("set exactly one of value (a value to add) or flag (bits to set)")
        return self


class RestrictionConfig(BaseModel):
    """``restriction``: a value added to an attribute while processing is restricted (GDPR Art. 18)."""

    model_config = ConfigDict(extra="forbid")

    attribute: str = Field(min_length=1, description="The attribute marked, e.g. employeeType.")
    value: str = Field(min_length=1, description="The value added; ``{reference}`` is replaced by the cause.")


class LdapConfig(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "ldap"``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="ldap://host[:port] or ldaps://host[:port].")
    bind_dn: str = Field(min_length=1, description="Who the connector binds as (needs write access): a DN, or "
                                                   "for Active Directory also user@domain.")
    password_env: str | None = Field(default=None, min_length=1, description="Environment variable with the "
                                                                             "bind password.")
    password: SecretStr | None = Field(default=None, description="The password itself: tests and development only.")
    base_dn: str = Field(min_length=1, description="Where the subject's entries are searched (subtree).")
    user_filter: str = Field(default="(&(objectClass=inetOrgPerson)(mail={email}))",
                             description="Filter finding entries by email; {email} is replaced, escaped.")
    user_id_filter: str | None = Field(default=None, description="Filter finding entries by user id; {user_id} "
                                       "is replaced, escaped. Default: inetOrgPerson by uid_attribute.")
    uid_attribute: str = Field(default="uid", min_length=1,
                               description="Attribute holding the user id (the value memberUid lists).")
    group_base_dn: str | None = Field(default=None, min_length=1, description="Where groups are searched; "
                                                                              "default base_dn.")
    group_member_attribute: str = Field(default="member", min_length=1,
                                        description="Group attribute listing members: DNs, or uids for memberUid.")
    export_attributes: list[str] = Field(default_factory=lambda: list(DEFAULT_EXPORT), min_length=1,
                                         description="Attributes exported (never credentials).")
    on_erase: Literal["delete", "disable"] = Field(default="delete", description="What erasure does to the entry.")
    disable: DisableConfig = Field(
        default_factory=lambda: DisableConfig(attribute="description", value="dsr: account disabled"),
        description="How an entry is disabled (erasure with on_erase = disable, deactivation).")
    disabled_ground: str = Field(default="Directory account kept disabled by the organisation's policy",
                                 min_length=1, description="Why a disabled entry is kept (evidence).")
    restriction: RestrictionConfig | None = Field(default=None, description="Restriction of processing.")
    empty_group_member: str | None = Field(default=None, min_length=1,
                                           description="DN put into a group that would lose its last member.")
    ca_file: Path | None = Field(default=None, description="CA certificates (PEM) for ldaps; default: system.")
    timeout: int = Field(default=10, ge=1, le=300, description="Seconds to connect and to wait for each answer.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError("must be ldap://host[:port] or ldaps://host[:port]")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("base_dn", "group_base_dn", "empty_group_member")
    @classmethod
    def _dn(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_dn(value)
            except lx.LDAPInvalidDnError:
                raise ValueError("is not a valid DN") from None
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @field_validator("export_attributes")
    @classmethod
    def _no_secrets(cls, value: list[str]) -> list[str]:
        secret = [a for a in value if a.lower() in SECRET_ATTRIBUTES]
        if secret:
            raise ValueError(f"{secret[0]} holds credentials and is never exported")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check(self) -> LdapConfig:
        if (self.password is None) == (self.password_env is None):
            raise ValueError("set exactly one of password_env (production) or password (tests)")
        if self.user_id_filter is None:
            self.user_id_filter = f"(&(objectClass=inetOrgPerson)({self.uid_attribute}={{user_id}}))"
        for option, template, placeholder in (("user_filter", self.user_filter, "{email}"),
                                              ("user_id_filter", self.user_id_filter, "{user_id}")):
            if placeholder not in template:
                raise ValueError(f"{option} must contain {placeholder}")
            try:
                parse_filter(template.replace(placeholder, "x"), None, False, False, None, False)
            except lx.LDAPException:
                raise ValueError(f"{option} is not a valid LDAP filter") from None
        return self

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> LdapConfig:
        """Validate the options and that the password is at hand; one line when they are wrong.

        Raises:
            ConfigurationError: The first problem, as ``option: message``.
        """
        try:
            config = cls.model_validate(dict(options))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigurationError((f"{where}: " if where else "") + str(err["msg"]).splitlines()[0]) from None
        config.secret()
        return config

    def secret(self) -> str:
        """The bind password, from the environment unless given directly."""
        if self.password is not None:
            return self.password.get_secret_value()
        value = os.environ.get(self.password_env or "")
        if not value:
            raise ConfigurationError(f"environment variable {self.password_env} (password_env) is not set")
        return value

    @property
    def member_by_uid(self) -> bool:
        """Whether groups list members by user id (``memberUid``) rather than by DN."""
        return self.group_member_attribute.lower() == "memberuid"


@dataclass
class _Entry:
    """A directory entry: its DN and attributes (names lower-cased, values as lists)."""

    dn: str
    attrs: dict[str, list[Any]] = field(default_factory=dict)

    def values(self, attribute: str) -> list[Any]:
        return self.attrs.get(attribute.lower(), [])


def _entries(response: Iterable[Mapping[str, Any]]) -> list[_Entry]:
    out = []
    for r in response or ():
        if r.get("type") != "searchResEntry":
            continue  # referrals (Active Directory) are not followed
        attrs = {k.lower(): (list(v) if isinstance(v, list | tuple) else [v]) for k, v in r["attributes"].items()}
        out.append(_Entry(r["dn"], attrs))
    return out


def _plain(value: Any) -> str:
    """An attribute value as text (binary values as base64)."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    return str(value)


def _cell(values: list[Any]) -> str | list[str] | None:
    """One export cell: None when absent, the value when single, a list when several."""
    texts = [_plain(v) for v in values]
    return None if not texts else texts[0] if len(texts) == 1 else texts


def _key(dn: str) -> str:
    return dn.lower()


class LdapConnector(Connector):
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

    def _new_server(self) -> ldap3.Server:
        """A server description per connection: ldap3 keeps per-server state that threads should not share."""
        parts = urlsplit(self.config.url)
        ldaps = parts.scheme == "ldaps"
        tls = None
        if ldaps:
            ca_file = str(self.config.ca_file) if self.config.ca_file else None
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)
        return ldap3.Server(parts.hostname or "", port=parts.port or (636 if ldaps else 389), use_ssl=ldaps,
                            tls=tls, get_info=ldap3.NONE, connect_timeout=self.config.timeout)

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

    # ---- connections and errors --------------------------------------------------------------

    async def _run(self, operation: str, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(conn, *args)`` in a worker thread on a fresh, bound connection."""
        return await asyncio.to_thread(self._call, operation, work, *args)

    def _call(self, operation: str, work: Callable[..., T], *args: Any) -> T:
        conn = ldap3.Connection(self._new_server(), self.config.bind_dn, self.config.secret(),
                                raise_exceptions=True, auto_referrals=False, receive_timeout=self.config.timeout)
        try:
            conn.open()
            try:
                conn.bind()
            except lx.LDAPOperationResult as exc:
                if int(exc.result or 0) in _RETRYABLE_RESULTS:
                    raise
                raise ConfigurationError(f"{self.name}: the LDAP server refused bind_dn and its password "
                                         f"({exc.description})") from None
            return work(conn, *args)
        except ConnectorError:
            raise
        except lx.LDAPInsufficientAccessRightsResult:
            raise ConfigurationError(f"{self.name}: {operation} failed: bind_dn lacks the access rights "
                                     "(insufficientAccessRights)") from None
        except lx.LDAPOperationResult as exc:
            code = int(exc.result or 0)
            raise ConnectorError(f"{self.name}: {operation} failed: LDAP result {code} ({exc.description})",
                                 retryable=code in _RETRYABLE_RESULTS) from None
        except lx.LDAPSSLConfigurationError as exc:
            raise ConfigurationError(f"{self.name}: TLS settings are wrong ({type(exc).__name__})") from None
        except (lx.LDAPCommunicationError, lx.LDAPResponseTimeoutError, lx.LDAPStartTLSError, OSError) as exc:
            raise ConnectorError(f"{self.name}: {operation} failed: cannot reach the LDAP server "
                                 f"({type(exc).__name__})") from None
        except lx.LDAPException as exc:
            raise ConnectorError(f"{self.name}: {operation} failed: {type(exc).__name__}", retryable=False) from None
        finally:
            with contextlib.suppress(lx.LDAPException, OSError):  # a connection that already broke
                conn.unbind()

    def _search(self, conn: ldap3.Connection, base: str, search_filter: str, attributes: list[str],
                option: str) -> list[_Entry]:
        """Every entry under ``base`` (subtree) matching ``search_filter``, page by page."""
        out: list[_Entry] = []
        cookie: bytes | None = None
        while True:
            try:
                conn.search(base, search_filter, search_scope=ldap3.SUBTREE, attributes=attributes or ["1.1"],
                            paged_size=PAGE_SIZE, paged_cookie=cookie)
            except lx.LDAPNoSuchObjectResult:
                raise ConfigurationError(f"{self.name}: {option} {base} does not exist") from None
            out += _entries(conn.response)
            control = (conn.result.get("controls") or {}).get(PAGED_RESULTS) or {}
            cookie = (control.get("value") or {}).get("cookie")
            if not cookie:
                return out

    def _read(self, conn: ldap3.Connection, dn: str, attributes: list[str],
              search_filter: str = "(objectClass=*)") -> _Entry | None:
        """The entry ``dn`` if it exists (and matches ``search_filter``)."""
        try:
            conn.search(dn, search_filter, search_scope=ldap3.BASE, attributes=attributes or ["1.1"])
        except lx.LDAPNoSuchObjectResult:
            return None
        found = _entries(conn.response)
        return found[0] if found else None

    # ---- finding the subject -----------------------------------------------------------------

    def _filter(self, subject: Subject) -> str | None:
        """The filter for the subject's entries (values escaped), or None without a usable identity."""
        parts = []
        if email := subject.identities.get("email"):
            parts.append(self.config.user_filter.replace("{email}", escape_filter_chars(email)))
        if user_id := subject.identities.get("user_id"):
            assert self.config.user_id_filter is not None
            parts.append(self.config.user_id_filter.replace("{user_id}", escape_filter_chars(user_id)))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"

    def _attributes(self) -> list[str]:
        """What is read of a user entry: the exported attributes and those the connector itself needs."""
        c = self.config
        wanted = [*c.export_attributes, c.uid_attribute, c.disable.attribute,
                  *([c.restriction.attribute] if c.restriction else [])]
        return list({a.lower(): a for a in wanted if a.lower() not in SECRET_ATTRIBUTES}.values())

    def _users(self, conn: ldap3.Connection, subject: Subject) -> list[_Entry]:
        search_filter = self._filter(subject)
        if search_filter is None:
            return []
        found = self._search(conn, self.config.base_dn, search_filter, self._attributes(), "base_dn")
        return list({_key(e.dn): e for e in found}.values())

    def _member_values(self, user: _Entry) -> list[str]:
        """How groups list ``user``: its DN, or its user ids for ``memberUid``."""
        if self.config.member_by_uid:
            return [_plain(v) for v in user.values(self.config.uid_attribute)]
        return [user.dn]

    def _groups_listing(self, conn: ldap3.Connection, value: str) -> list[_Entry]:
        """The groups whose member attribute holds ``value``."""
        attr = self.config.group_member_attribute
        return self._search(conn, self.config.group_base_dn or self.config.base_dn,
                            f"({attr}={escape_filter_chars(value)})", ["cn"], "group_base_dn")

    def _memberships(self, conn: ldap3.Connection, users: list[_Entry]) -> list[tuple[_Entry, _Entry, str]]:
        """(user, group, member value) for every group listing one of ``users``."""
        out, seen = [], set()
        for user in users:
            for value in self._member_values(user):
                for group in self._groups_listing(conn, value):
                    if (_key(group.dn), value) not in seen:
                        seen.add((_key(group.dn), value))
                        out.append((user, group, value))
        return out

    # ---- disabling and marking ---------------------------------------------------------------

    def _is_disabled(self, entry: _Entry) -> bool:
        d = self.config.disable
        values = entry.values(d.attribute)
        if d.flag is not None:
            try:
                return any(int(_plain(v)) & d.flag == d.flag for v in values)
            except ValueError:
                return False
        return any(_plain(v).casefold() == (d.value or "").casefold() for v in values)

    def _add_value(self, conn: ldap3.Connection, dn: str, attribute: str, value: str) -> None:
        """Add ``value``; where the attribute is single-valued and holds another value, replace it."""
        try:
            conn.modify(dn, {attribute: [(ldap3.MODIFY_ADD, [value])]})
        except lx.LDAPAttributeOrValueExistsResult:
            return
        except lx.LDAPConstraintViolationResult:
            conn.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value])]})

    def _disable(self, conn: ldap3.Connection, dn: str) -> bool:
        """Disable the entry ``dn`` unless it is; False when it does not exist."""
        d = self.config.disable
        entry = self._read(conn, dn, [d.attribute])
        if entry is None:
            return False
        if self._is_disabled(entry):
            return True
        if d.flag is None:
            self._add_value(conn, dn, d.attribute, d.value or "")
            return True
        current = 0
        for v in entry.values(d.attribute):
            try:
                current = int(_plain(v))
            except ValueError:
                raise ConnectorError(f"{self.name}: disable.attribute {d.attribute} does not hold an integer",
                                     retryable=False) from None
        conn.modify(dn, {d.attribute: [(ldap3.MODIFY_REPLACE, [str(current | d.flag)])]})
        return True

    def _remove_member(self, conn: ldap3.Connection, group_dn: str, attribute: str, value: str) -> bool:
        """Take ``value`` out of the group; False when it was not (or no longer) there."""
        if self._read(conn, group_dn, [], f"({attribute}={escape_filter_chars(value)})") is None:
            return False
        try:
            conn.modify(group_dn, {attribute: [(ldap3.MODIFY_DELETE, [value])]})
        except (lx.LDAPNoSuchAttributeResult, lx.LDAPNoSuchObjectResult):
            return False
        except lx.LDAPObjectClassViolationResult:
            placeholder = self.config.empty_group_member
            if not placeholder:
                raise ConnectorError(f"{self.name}: erase: group {group_dn} requires a member and the subject is "
                                     "its last; set empty_group_member", retryable=False) from None
            conn.modify(group_dn, {attribute: [(ldap3.MODIFY_DELETE, [value]), (ldap3.MODIFY_ADD, [placeholder])]})
        return True

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
        def work(conn: ldap3.Connection) -> tuple[list[_Entry], list[tuple[_Entry, _Entry, str]]]:
            users = self._users(conn, subject)
            return users, self._memberships(conn, users)

        users, memberships = await self._run("export", work)
        exported: dict[str, int] = {}
        if users:
            fields = ["dn", *self.config.export_attributes]
            async with sink.collection(USERS, fields) as writer:
                for user in users:
                    await writer.write({"dn": user.dn, **{a: _cell(user.values(a))
                                                          for a in self.config.export_attributes}})
            exported[USERS] = len(users)
        if memberships:
            async with sink.collection(GROUPS, ["user_dn", "group_dn", "group_cn"]) as writer:
                for user, group, _ in memberships:
                    await writer.write({"user_dn": user.dn, "group_dn": group.dn,
                                        "group_cn": _cell(group.values("cn"))})
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
            existing = {_key(e.dn): e for e in self._users(conn, subject)}
            for dn in planned_users:
                if _key(dn) not in existing and (entry := self._read(conn, dn, self._attributes())) is not None:
                    existing[_key(dn)] = entry
            values = set(planned_values)
            if not self.config.member_by_uid:
                values.update(planned_users)
            for entry in existing.values():
                values.update(self._member_values(entry))
            memberships = {(_key(g.dn), v) for v in values for g in self._groups_listing(conn, v)}
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
