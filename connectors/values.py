"""Database values as text: the form exports and plans write them in, and the form sent back as parameters.

A value read from a database becomes JSON-native (:func:`jsonable`) for export bundles and stored plans, and
any stored value goes back to PostgreSQL as text (:func:`text_param`), which the database casts to the column's
type; both forms read back as the same value.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID


def jsonable(value: Any) -> Any:
    """A JSON-friendly form of a database value, that PostgreSQL also reads back as text input."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return timestamp_text(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID | timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def timestamp_text(value: datetime) -> str:
    """ISO 8601 as PostgreSQL's JSON writes a timestamp: ``T``, the seconds' fraction without trailing zeros, UTC.

    ``2024-03-01T10:00:00.5+00:00``; a naive value (``timestamp without time zone``) has no offset. That is
    the form ``to_json`` gives in a UTC session, so an export by COPY (``connectors.postgres_copy``) writes
    the very same text, and PostgreSQL reads it back as the same value.
    """
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    text = value.replace(microsecond=0, tzinfo=None).isoformat()
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + ("+00:00" if value.tzinfo is not None else "")


def text_param(value: Any) -> str | None:
    """A value as a text parameter, which PostgreSQL then casts to the column's type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)
