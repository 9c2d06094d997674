"""The blocking ``ldap3`` side of the LDAP connector, for :mod:`connectors.ldap`.

:class:`LdapOperations`, mixed into :class:`~connectors.ldap.LdapConnector`, opens one bound
connection per operation in a worker thread (:meth:`~LdapOperations._run`), so calls made
concurrently never share a socket, and maps ``ldap3``'s errors to :class:`ConfigurationError`
(a refused bind, missing access rights, wrong TLS settings) or :class:`ConnectorError`
(retryable when the server is busy, unavailable or out of reach). On a connection it
searches page by page (the paged results control), finds the subject's entries and their
group memberships, disables entries, adds marking values and takes members out of groups.
Entries come back as :class:`Entry` (DN and attributes, names lower-cased).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as lx
from ldap3.utils.conv import escape_filter_chars

from connectors.contract import ConfigurationError, ConnectorError, Subject
from connectors.ldap_config import SECRET_ATTRIBUTES, LdapConfig

T = TypeVar("T")

PAGE_SIZE = 500
PAGED_RESULTS = "1.2.840.113556.1.4.319"
_RETRYABLE_RESULTS = {3, 51, 52}  # timeLimitExceeded, busy, unavailable


@dataclass
class Entry:
    """A directory entry: its DN and attributes (names lower-cased, values as lists)."""

    dn: str
    attrs: dict[str, list[Any]] = field(default_factory=dict)

    def values(self, attribute: str) -> list[Any]:
        return self.attrs.get(attribute.lower(), [])


def _entries(response: Iterable[Mapping[str, Any]]) -> list[Entry]:
    out = []
    for r in response or ():
        if r.get("type") != "searchResEntry":
            continue  # referrals (Active Directory) are not followed
        attrs = {k.lower(): (list(v) if isinstance(v, list | tuple) else [v]) for k, v in r["attributes"].items()}
        out.append(Entry(r["dn"], attrs))
    return out


def _plain(value: Any) -> str:
    """An attribute value as text (binary values as base64)."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    return str(value)


def cell(values: list[Any]) -> str | list[str] | None:
    """One export cell: None when absent, the value when single, a list when several."""
    texts = [_plain(v) for v in values]
    return None if not texts else texts[0] if len(texts) == 1 else texts


def dn_key(dn: str) -> str:
    """A DN as entries are compared by: lower-cased."""
    return dn.lower()


class LdapOperations:
    """Connections, searches and changes on the directory; mixed into ``LdapConnector``."""

    if TYPE_CHECKING:  # provided by LdapConnector
        name: str
        config: LdapConfig

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
                option: str) -> list[Entry]:
        """Every entry under ``base`` (subtree) matching ``search_filter``, page by page."""
        out: list[Entry] = []
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
              search_filter: str = "(objectClass=*)") -> Entry | None:
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

    def _users(self, conn: ldap3.Connection, subject: Subject) -> list[Entry]:
        search_filter = self._filter(subject)
        if search_filter is None:
            return []
        found = self._search(conn, self.config.base_dn, search_filter, self._attributes(), "base_dn")
        return list({dn_key(e.dn): e for e in found}.values())

    def _member_values(self, user: Entry) -> list[str]:
        """How groups list ``user``: its DN, or its user ids for ``memberUid``."""
        if self.config.member_by_uid:
            return [_plain(v) for v in user.values(self.config.uid_attribute)]
        return [user.dn]

    def _groups_listing(self, conn: ldap3.Connection, value: str) -> list[Entry]:
        """The groups whose member attribute holds ``value``."""
        attr = self.config.group_member_attribute
        return self._search(conn, self.config.group_base_dn or self.config.base_dn,
                            f"({attr}={escape_filter_chars(value)})", ["cn"], "group_base_dn")

    def _memberships(self, conn: ldap3.Connection, users: list[Entry]) -> list[tuple[Entry, Entry, str]]:
        """(user, group, member value) for every group listing one of ``users``."""
        out, seen = [], set()
        for user in users:
            for value in self._member_values(user):
                for group in self._groups_listing(conn, value):
                    if (dn_key(group.dn), value) not in seen:
                        seen.add((dn_key(group.dn), value))
                        out.append((user, group, value))
        return out

    # ---- disabling and marking ---------------------------------------------------------------

    def _is_disabled(self, entry: Entry) -> bool:
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
