"""Options of a ``type = "ldap"`` system (:class:`LdapConfig`), for :mod:`connectors.ldap`.

``LdapConfig.parse`` validates the TOML options of a ``[systems.<name>]`` table (the URL,
DNs, filter templates, how entries are disabled and restriction is marked) and checks that
the bind password is at hand; every problem is one line, raised as
:class:`ConfigurationError`. Credential attributes (:data:`SECRET_ATTRIBUTES`) can never be
exported. The options themselves are described in :mod:`connectors.ldap`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ldap3.core import exceptions as lx
from ldap3.operation.search import parse_filter
from ldap3.utils.dn import parse_dn
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from connectors.contract import ConfigurationError

DEFAULT_EXPORT = ["cn", "sn", "givenName", "mail", "uid", "telephoneNumber", "title", "description"]
SECRET_ATTRIBUTES = frozenset({
    "userpassword", "authpassword", "unicodepwd", "dbcspwd", "ntpwdhistory", "lmpwdhistory",
    "supplementalcredentials", "sambantpassword", "sambalmpassword", "pwdhistory",
})
"""Attributes holding credentials: never requested, whatever ``export_attributes`` says."""


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
