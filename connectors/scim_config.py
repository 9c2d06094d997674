"""Options of a ``type = "scim"`` system (:class:`ScimConfig`), for :mod:`connectors.scim`.

``ScimConfig.parse`` validates the TOML options of a ``[systems.<name>]`` table (an
http(s) base URL, exactly one of ``token_env``/``token``, identity types mapped to SCIM
attribute paths, an extension attribute path for restriction) and checks that the bearer
token is at hand; every problem is one line, raised as :class:`ConfigurationError`. The
options themselves are described in :mod:`connectors.scim`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.contract import ConfigurationError

_PATH = re.compile(r"^(urn:[A-Za-z0-9.:_-]+:)?[A-Za-z][\w$-]*(\.[A-Za-z][\w$-]*)?$")


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
