"""Export by COPY: PostgreSQL writes the rows in the bundle's JSON and CSV forms, Python only moves bytes.

The row-by-row export (a server-side cursor, each row serialised twice in Python) runs
at a small fraction of what ``COPY ... TO STDOUT`` pushes out. When the sink's writer
accepts rows already serialised (:class:`SerialisedWriter`) and every declared field of
a collection (two at least) has a column type listed in :data:`SERIALISABLE`, the
connector instead runs two COPYs of the same rows at once, on two connections sharing
one snapshot (``pg_export_snapshot``): one writes each row's JSON object, the other its
CSV record (PostgreSQL's CSV, whose quoting is Python's), byte for byte what the
writer's own ``write`` produces (``json.dumps(row, ensure_ascii=False)`` of the
:func:`connectors.values.jsonable` values; Python's ``csv`` excel dialect with ``"\\n"``
line ends). Neither stream needs any change in Python, whatever the values hold:

- the JSON COPY is in CSV format with a control byte as quote and another as delimiter,
  which JSON text never holds raw (``to_json`` escapes control characters, and newlines),
  so no value is quoted or escaped; each row ends in ``,`` (so COPY's line end makes the
  ``",\\n"`` between rows) and :class:`JsonStream` drops the last row's comma;
- the CSV COPY's records end in ``"\\n"`` as the bundle's do.

:class:`JsonStream` and :class:`CsvStream` hand each chunk to the writer before the next
is read, so memory stays flat whatever the row count.

COPY takes no parameters, and values never enter SQL text: the query's array
parameters are first stored as transaction-local settings (``set_config(..., true)``)
and the COPY's predicate reads them back in uncorrelated subqueries (evaluated once).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from connectors.postgres_config import Column, qi

SETTING = "dsr_export.p{n}"
"""The transaction-local setting holding the COPYs' ``n``-th array parameter."""
SESSION = {"DateStyle": "ISO", "TimeZone": "UTC", "standard_conforming_strings": "on"}
"""Transaction-local settings the COPYs' text relies on (ISO dates, timestamps in UTC; backslashes in literals
as they are)."""

_TEXT = {"text", "character varying", "json", "jsonb"}
_INT = {"smallint", "integer", "bigint"}
_TIMESTAMPS = {"timestamp without time zone", "timestamp with time zone"}
_INFINITIES = ("WHEN {ref} > 'epoch' THEN '{quote}9999-12-31T23:59:59.999999{quote}' "
               "WHEN {ref} < 'epoch' THEN '{quote}0001-01-01T00:00:00{quote}'")
"""What asyncpg makes of a timestamp's infinities (naive ``datetime.max`` and ``min``), as the row path writes them."""
SERIALISABLE = frozenset({*_TEXT, *_INT, *_TIMESTAMPS, "boolean", "uuid", "date"})
"""Column types (``information_schema`` ``data_type``) PostgreSQL serialises exactly as the row path does.

Not here, so exported by the row path: ``numeric`` (Python writes small values as ``1E-7``),
floating point (``1e+15`` against ``1000000000000000.0``), ``character`` (padding), arrays,
intervals and the rest.
"""


JSON_COPY = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}
"""``copy_from_query`` options of the JSON COPY: CSV whose quote and delimiter bytes JSON text never holds raw,
so each row's text comes out as it is."""


@runtime_checkable
class SerialisedWriter(Protocol):
    """A collection writer that also takes rows already serialised in its own formats.

    The JSON and the CSV arrive separately (possibly interleaved), each in row order, in
    parts that may end anywhere, even inside a UTF-8 character; then the row count.
    """

    async def write_json_bytes(self, data: bytes | memoryview) -> None:
        """Append part of the rows' JSON objects, as ``json.dumps(row, ensure_ascii=False)`` writes them,
        joined by ``",\\n"`` (UTF-8)."""

    async def write_csv_bytes(self, data: bytes | memoryview) -> None:
        """Append part of the CSV records (Python's excel dialect, each record ending in ``"\\n"``)."""

    def count_rows(self, rows: int) -> None:
        """Add ``rows`` rows written through the two streams to the collection's count."""


def ql(text: str) -> str:
    """Quote an SQL string literal (for settings' names and JSON keys, never for values)."""
    return "'" + text.replace("'", "''") + "'"


def serialisable(fields: Sequence[str], columns: dict[str, Column]) -> bool:
    """Whether PostgreSQL can write these fields' rows (one field: csv's lone ``""`` is left to Python)."""
    return len(fields) > 1 and all(columns[f].sql_type in SERIALISABLE for f in fields)


def _text(column: Column, ref: str) -> str:
    """The text Python's row path writes for a non-JSON-native value (NULL for NULL)."""
    kind = column.sql_type
    if kind == "date":
        return (f"(CASE WHEN isfinite({ref}) THEN {ref}::text "
                f"WHEN {ref} > 'epoch' THEN '9999-12-31' WHEN {ref} < 'epoch' THEN '0001-01-01' END)")
    if kind in _TIMESTAMPS:  # connectors.values.timestamp_text: PostgreSQL's own text with a T, in UTC
        aware = kind == "timestamp with time zone"
        text = f"({ref} AT TIME ZONE 'UTC')::text" if aware else f"{ref}::text"
        suffix = " || '+00:00'" if aware else ""
        return (f"(CASE WHEN isfinite({ref}) THEN replace({text}, ' ', 'T'){suffix} "
                f"{_INFINITIES.format(ref=ref, quote='')} END)")
    return f"{ref}::text"


def json_sql(fields: Sequence[str], columns: dict[str, Column]) -> str:
    """SQL for a row's JSON object, as ``json.dumps`` writes it, then a comma (``||`` costs less than ``concat``)."""
    args = []
    for i, name in enumerate(fields):
        column, ref = columns[name], qi(name)
        args.append(ql(("{" if i == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": "))
        if column.sql_type in _INT:
            value = f"{ref}::text"
        elif column.sql_type == "boolean":
            value = f"(CASE WHEN {ref} THEN 'true' WHEN NOT {ref} THEN 'false' END)"
        elif column.sql_type in _TEXT:
            value = f"to_json({ref}::text)::text"
        elif column.sql_type in _TIMESTAMPS:  # in the UTC session (SESSION), to_json is timestamp_text
            infinities = _INFINITIES.format(ref=ref, quote='"')
            value = f"(CASE WHEN isfinite({ref}) THEN to_json({ref})::text {infinities} END)"
        else:
            value = f"('\"' || {_text(column, ref)} || '\"')"  # no character JSON escapes
        args.append(f"coalesce({value}, 'null')")
    return " || ".join([*args, "'},'"])


def csv_sql(fields: Sequence[str], columns: dict[str, Column]) -> str:
    """SQL for a row's CSV cells: PostgreSQL's CSV quotes as Python's does once empty text is NULL."""
    cells = []
    for name in fields:
        column, ref = columns[name], qi(name)
        if column.sql_type in _INT:
            cells.append(ref)
        elif column.sql_type == "boolean":
            cells.append(f"(CASE WHEN {ref} THEN 'True' WHEN NOT {ref} THEN 'False' END)")
        elif column.sql_type in _TEXT:
            cells.append(f"nullif({ref}::text, '')")  # Python writes '' and None alike, unquoted
        else:
            cells.append(_text(column, ref))
    return ", ".join(cells)


class _Stream:
    """An ``output`` for asyncpg's ``copy_from_query`` that never raises into the COPY.

    Raising there makes asyncpg cancel the query on the server, which can wait for
    ever while the twin COPY runs; a failure to write is kept instead, the rest of the
    stream is read and dropped, and :meth:`finish` raises it once the COPY is over.
    """

    def __init__(self, writer: SerialisedWriter) -> None:
        """Write into ``writer``."""
        self.writer = writer
        self.error: Exception | None = None

    async def __call__(self, data: bytes) -> None:
        """Take one chunk of COPY output."""
        if self.error is not None:
            return
        try:
            await self.take(data)
        except Exception as exc:  # raised again by finish()
            self.error = exc

    async def take(self, data: bytes) -> None:
        """Write what ``data`` completes."""
        raise NotImplementedError

    def finish(self) -> None:
        """Raise what failed, if anything did."""
        if self.error is not None:
            raise self.error


class JsonStream(_Stream):
    """The JSON COPY (one object and a comma per line) into a writer, without the last row's comma."""

    def __init__(self, writer: SerialisedWriter) -> None:
        """Write into ``writer``."""
        super().__init__(writer)
        self._held = b""

    async def take(self, data: bytes) -> None:
        """Write all but the last two bytes seen (the last row's ``",\\n"`` once the COPY ends)."""
        if len(data) >= 2:
            if self._held:
                await self.writer.write_json_bytes(self._held)
            await self.writer.write_json_bytes(memoryview(data)[:-2])
            self._held = data[-2:]
            return
        joined = self._held + data
        if len(joined) > 2:
            await self.writer.write_json_bytes(joined[:-2])
        self._held = joined[-2:]

    def finish(self) -> None:
        """Raise what failed; check the COPY ended on a whole row."""
        super().finish()
        if self._held not in (b"", b",\n"):
            raise ValueError("JSON COPY output ended inside a row")


class CsvStream(_Stream):
    """PostgreSQL's CSV into a writer, as it comes: its records are the bundle's."""

    async def take(self, data: bytes) -> None:
        """Write ``data``."""
        await self.writer.write_csv_bytes(data)
