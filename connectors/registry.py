"""Finds connector classes: the built-in ones and those registered under the entry point group ``dsr.connectors``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from connectors.contract import ConfigurationError, Connector

ENTRY_POINT_GROUP = "dsr.connectors"

BUILTIN: dict[str, str] = {
    "postgres": "connectors.postgres:PostgresConnector",
    "scim": "connectors.scim:ScimConnector",
    "ldap": "connectors.ldap:LdapConnector",
    "s3_backups": "connectors.backups:BackupsConnector",
    "opendsr": "connectors.partners.opendsr:OpenDsrConnector",
    "partner_webhook": "connectors.partners.webhook:WebhookConnector",
    "manual_task": "connectors.partners.manual:ManualTaskConnector",
}


def _load(ref: str) -> type[Connector]:
    module, _, attr = ref.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise ConfigurationError(f"{ref} is not a Connector")
    return cls


def connector_class(type_name: str) -> type[Connector]:
    """The class for ``type_name``: built-in first, then the ``dsr.connectors`` entry points."""
    if type_name in BUILTIN:
        return _load(BUILTIN[type_name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == type_name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Connector)):
                raise ConfigurationError(f"entry point {ep.value} is not a Connector")
            return cls
    known = sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise ConfigurationError(f"unknown connector type {type_name!r} (known: {', '.join(known)})")


def build_connector(name: str, type_name: str, options: Mapping[str, Any]) -> Connector:
    """Instantiate and configure a connector for the system called ``name``."""
    return connector_class(type_name).from_options(name, options)
