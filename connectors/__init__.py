"""Connector SDK: the contract every system integration implements.

Kept light on purpose: workflows import it inside Temporal's sandbox, so only
the contract types are re-exported here; implementations live in their own
modules and are loaded by ``connectors.registry``.
"""

from connectors.contract import (
    ActionOutcome,
    Capability,
    ConfigurationError,
    Connector,
    ConnectorError,
    ErasureOutcome,
    ExportedFile,
    ExportOutcome,
    ExportSink,
    KeyRange,
    LocateOutcome,
    PlanItem,
    PlanStore,
    RetainedItem,
    Subject,
    UnsupportedError,
    VerificationOutcome,
)

__all__ = [
    "ActionOutcome",
    "Capability",
    "ConfigurationError",
    "Connector",
    "ConnectorError",
    "ErasureOutcome",
    "ExportOutcome",
    "ExportSink",
    "ExportedFile",
    "KeyRange",
    "LocateOutcome",
    "PlanItem",
    "PlanStore",
    "RetainedItem",
    "Subject",
    "UnsupportedError",
    "VerificationOutcome",
]
