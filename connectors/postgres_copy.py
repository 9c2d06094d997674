"""Export by COPY: PostgreSQL writes the rows in the bundle's JSON and CSV forms, Python only moves bytes.

The row-by-row export (a server-side cursor, each row serialised twice in Python) runs
at a small fraction of what ``COPY ... TO STDOUT`` pushes out. When the sink's writer
accepts rows already serialised (:class:`SerialisedWriter`) and every declared field of
a collection (two at least) has a column type listed in :data:`SERIALISABLE`, the
connector instead runs two COPYs of the same rows at once, on two connections sharing
one snapshot (``pg_export_snapshot``): one writes each row's JSON object (text format,
one per line), the other its CSV record (PostgreSQL's CSV, whose quoting is Python's),
byte for byte what the writer's own ``write`` produces (``json.dumps(row,
ensure_ascii=False)`` of the :func:`connectors.values.jsonable` values; Python's
``csv`` excel dialect). :class:`JsonStream` and :class:`CsvStream` adapt the two
streams with C-level operations on whole chunks (separators, COPY's escapes, CSV line
ends), and each chunk is written before the next is read, so memory stays flat
whatever the row count. Other collections keep the row path.

COPY takes no parameters, and values never enter SQL text: the query's array
parameters are first stored as transaction-local settings (``set_config(..., true)``)
and the COPY's predicate reads them back in uncorrelated subqueries (evaluated once).
"""

from __future__ import annotations

import codecs
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


@runtime_checkable
class SerialisedWriter(Protocol):
    """A collection writer that also takes rows already serialised in its own formats.

    The JSON and the CSV arrive separately (possibly interleaved), each in row order.
    """

    async def write_json_rows(self, json_rows: bytes, rows: int) -> None:
        """Append ``rows`` rows' JSON objects, as ``json.dumps(row, ensure_ascii=False)`` writes them,
        joined by ``",\\n"`` (UTF-8)."""

    async def write_csv_records(self, csv_records: bytes) -> None:
        """Append CSV records (Python's excel dialect: each ends in ``"\\r\\n"``); may end inside one."""


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
    """SQL for a row's JSON object, as ``json.dumps`` writes it (``||`` costs less than ``concat``)."""
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
    return " || ".join([*args, "'}'"])


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
    """The JSON COPY (text format, one object per line) into a writer, counting rows."""

    def __init__(self, writer: SerialisedWriter) -> None:
        """Write into ``writer``."""
        super().__init__(writer)
        self.rows = 0
        self._rest = b""

    async def take(self, data: bytes) -> None:
        """Write the whole rows (COPY escapes newlines in values: raw ones end rows)."""
        end = data.rfind(b"\n")
        if end < 0:
            self._rest += data
            return
        lines, self._rest = self._rest + data[:end], data[end + 1:]
        n = lines.count(b"\n") + 1
        await self.writer.write_json_rows(_unescape(lines.replace(b"\n", b",\n")), n)
        self.rows += n

    def finish(self) -> None:
        """Raise what failed; check the COPY ended on a whole row."""
        super().finish()
        if self._rest:
            raise ValueError("COPY output ended inside a row")


class CsvStream(_Stream):
    """PostgreSQL's CSV into a writer: records end in CRLF as Python's do; newlines in quotes stay."""

    def __init__(self, writer: SerialisedWriter) -> None:
        """Write into ``writer``."""
        super().__init__(writer)
        self._quoted = False

    async def take(self, data: bytes) -> None:
        """Write ``data`` with its record ends made CRLF."""
        if not self._quoted and b'"' not in data:
            await self.writer.write_csv_records(data.replace(b"\n", b"\r\n"))
            return
        pieces = data.split(b"\n")
        out: list[bytes] = []
        for piece in pieces[:-1]:
            self._quoted ^= piece.count(b'"') % 2 == 1
            out += (piece, b"\n" if self._quoted else b"\r\n")
        self._quoted ^= pieces[-1].count(b'"') % 2 == 1
        out.append(pieces[-1])
        await self.writer.write_csv_records(b"".join(out))

    def finish(self) -> None:
        """Raise what failed; check the COPY ended outside a quoted field."""
        super().finish()
        if self._quoted:
            raise ValueError("CSV COPY output ended inside a quoted field")


def _unescape(data: bytes) -> bytes:
    r"""Undo COPY's text-format escapes (``\\``, ``\n``, ``\r``, ``\t``, ``\b``, ``\f``, ``\v``).

    Those are the only escapes COPY writes, and each is a Python bytes escape meaning the
    same byte, so the C-level ``escape_decode`` undoes them in one pass.
    """
    if b"\\" not in data:
        return data
    return codecs.escape_decode(data)[0]  # type: ignore[attr-defined]
