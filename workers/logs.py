"""Logging: structlog, JSON in production and console in dev, with identities scrubbed from every event."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+(@|%40)[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PII_KEYS = frozenset({"email", "emails", "name", "names", "identities", "identity", "user_id", "phone", "address"})
REDACTED = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return EMAIL.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in PII_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def scrub_identities(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Remove identities that slipped into a log event: identity-named keys and anything shaped like an email."""
    for key in list(event):
        event[key] = REDACTED if key.lower() in PII_KEYS else _scrub(event[key])
    return event


_configured = False


def configure_logging(*, json_output: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None,
                      force: bool = False) -> None:
    """Configure structlog once per process. ``DSR_LOG_FORMAT=json`` (or no TTY) selects JSON lines.

    Args:
        json_output: JSON lines (True) or the console renderer (False); default from the environment.
        level: The lowest level logged.
        stream: Where events go (default: standard error).
        force: Configure again even if configured before (tests that read the rendered events).
    """
    global _configured
    if _configured and not force:
        return
    _configured = True
    if json_output is None:
        fmt = os.environ.get("DSR_LOG_FORMAT")
        json_output = fmt == "json" if fmt else not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub_identities,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        # Not cached: a logger keeps following the configuration (and the scrubber) if it is set again.
        cache_logger_on_first_use=False,
    )
