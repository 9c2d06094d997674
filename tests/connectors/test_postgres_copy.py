"""The COPY export writes the very bytes the row-by-row export writes, for every type it serialises."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from activities.export_store import BundleSink
from connectors import postgres
from connectors.contract import ConnectorError
from connectors.postgres import PostgresConnector
from connectors.postgres_copy import SERIALISABLE, CsvStream, JsonStream
from tests.connectors.conftest import MakeConnector, subject

TYPES = {
    "n_small": "smallint", "n_int": "integer", "n_big": "bigint", "t_text": "text", "t_var": "varchar(200)",
    "t_json": "json", "t_jsonb": "jsonb", "b": "boolean", "u": "uuid", "d": "date", "ts": "timestamp",
    "tstz": "timestamptz",
}
TRICKY_TEXT = ["", " leading space", 'comma, "quote"', "line\nbreak", "cr\rlf\r\n", "lone\rcr", "tab\there",
               "back\\slash", "\\.", "\\N", "ctl\x01\x1f\x7f", "é ü 漢字 😀", "sep\u2028\u2029", "x" * 300]
TRICKY_TS = ["2020-01-01 00:00:00", "2020-01-01 00:00:00.1234", "1999-12-31 23:59:59.000001", "0999-05-06 07:08:09",
             "infinity", "-infinity"]


def dataset(tmp_path: Path) -> Path:
    """person (every serialisable type) -> event (many rows) -> price (a numeric: the row path)."""
    person = [{"name": "id", "data_categories": ["user.unique_id"], "fides_meta": {"primary_key": True}},
              {"name": "email", "data_categories": ["user.contact.email"], "fides_meta": {"identity": "email"}},
              *({"name": c, "data_categories": ["user.behavior"]} for c in TYPES)]
    ref = {"references": [{"dataset": "copy", "field": "person.id", "direction": "from"}]}
    event = [{"name": "id", "data_categories": ["system.operations"], "fides_meta": {"primary_key": True}},
             {"name": "person_id", "data_categories": ["user.unique_id"], "fides_meta": ref},
             {"name": "body", "data_categories": ["user.behavior"]},
             {"name": "at", "data_categories": ["user.behavior"]}]
    price = [{"name": "person_id", "data_categories": ["user.unique_id"], "fides_meta": ref},
             {"name": "amount", "data_categories": ["user.financial"]}]
    doc = {"dataset": [{"fides_key": "copy", "collections": [
        {"name": "person", "fields": person}, {"name": "event", "fields": event},
        {"name": "price", "fields": price}]}]}
    path = tmp_path / "copy.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def fill(db: asyncpg.Connection) -> None:
    """Rows holding every awkward value, for two people; many events, to cross COPY's chunks."""
    cols = ", ".join(f"{c} {t}" for c, t in TYPES.items())
    await db.execute(f"""
        CREATE TABLE person (id bigint PRIMARY KEY, email text, {cols});
        CREATE TABLE event (id bigint PRIMARY KEY, person_id bigint, body text, at timestamptz);
        CREATE TABLE price (id serial PRIMARY KEY, person_id bigint, amount numeric);
    """)
    rows: list[tuple[Any, ...]] = []
    for i in range(max(len(TRICKY_TEXT), len(TRICKY_TS))):
        text = TRICKY_TEXT[i % len(TRICKY_TEXT)]
        rows.append((i + 1, "Copy@Example.com" if i % 3 else "other@example.com", -(2**15) + i, i * 1000, 2**62 + i,
                     text, text[:200], json.dumps({"t": text, "n": [1, 2.5]}), json.dumps({"b": text, "a": None}),
                     i % 2 == 0, f"{i:08x}-0000-4000-8000-00000000000{i % 10}", TRICKY_TS[i % len(TRICKY_TS)][:10]
                     if "inf" not in TRICKY_TS[i % len(TRICKY_TS)] else TRICKY_TS[i % len(TRICKY_TS)],
                     TRICKY_TS[i % len(TRICKY_TS)], TRICKY_TS[(i + 1) % len(TRICKY_TS)]))
    rows.append((99, "copy@example.com", *([None] * len(TYPES))))  # every value NULL
    placeholders = ", ".join(f"${i + 1}::text" for i in range(len(TYPES) + 2))
    casts = ", ".join(["x1::bigint", "x2", *(f"x{i + 3}::{t}" for i, t in enumerate(TYPES.values()))])
    await db.executemany(
        f"INSERT INTO person SELECT {casts} FROM (SELECT {placeholders}) AS v("
        + ", ".join(f"x{i + 1}" for i in range(len(TYPES) + 2)) + ")",
        [[None if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in r] for r in rows])
    await db.execute("""
        INSERT INTO event SELECT g, 1 + g % 14, CASE WHEN g % 7 = 0 THEN 'q"uo,te' || chr(10) || g
                                                     ELSE md5(g::text) END,
                                 timestamptz '2024-03-01 12:00:00+02' + g * interval '1.5 seconds'
        FROM generate_series(1, 20000) g;
        INSERT INTO price (person_id, amount) VALUES (2, 1.50), (2, 0.0000001), (3, NULL);
    """)


class RowsOnly:
    """A sink whose writers take rows only: the connector's row-by-row path, into the same files."""

    def __init__(self, inner: BundleSink) -> None:
        self.inner = inner

    @asynccontextmanager
    async def collection(self, name: str, fields: Sequence[str]) -> AsyncIterator[Any]:
        async with self.inner.collection(name, fields) as writer:
            yield _RowWriter(writer)


class _RowWriter:
    def __init__(self, writer: Any) -> None:
        self._writer = writer

    async def write(self, row: Mapping[str, Any]) -> None:
        await self._writer.write(row)


async def export_both(connector: PostgresConnector, tmp_path: Path) -> tuple[BundleSink, BundleSink]:
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir()
    slow.mkdir()
    fast_sink, slow_sink = BundleSink(fast), BundleSink(slow)
    who = subject("COPY@example.com")
    assert (await connector.export(who, fast_sink)).exported == fast_sink.exported
    assert (await connector.export(who, RowsOnly(slow_sink))).exported == slow_sink.exported
    return fast_sink, slow_sink


@pytest.mark.parametrize("pool", ["free", "exhausted"])
async def test_copy_export_is_byte_for_byte_the_row_export(
    make_connector: MakeConnector, db: asyncpg.Connection, tmp_path: Path, monkeypatch: Any, pool: str
) -> None:
    """Both COPYs at once on two connections, or one after the other when the pool has no second one."""
    await fill(db)
    connector = await make_connector(dataset=str(dataset(tmp_path)))
    held = []
    if pool == "exhausted":
        monkeypatch.setattr(postgres, "TWIN_WAIT", 0.01)
        assert connector._pool is not None
        held = [await connector._pool.acquire() for _ in range(connector._pool.get_max_size() - 1)]
    assert {connector._columns["person"][c].sql_type for c in TYPES} <= SERIALISABLE
    copies: list[str] = []
    original = asyncpg.Connection.copy_from_query

    async def spy(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        copies.append(query)
        return await original(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_from_query", spy)
    fast, slow = await export_both(connector, tmp_path)
    assert len(copies) == 4  # person and event by COPY (JSON and CSV); price (numeric) by the row path
    assert all("example.com" not in q.lower() for q in copies)  # values travel as settings, not SQL text
    mine = "SELECT id FROM person WHERE lower(email) = 'copy@example.com'"
    expected = {"person": await db.fetchval(f"SELECT count(*) FROM ({mine}) m"),
                "event": await db.fetchval(f"SELECT count(*) FROM event WHERE person_id IN ({mine})"),
                "price": 3}
    assert fast.exported == slow.exported == expected and expected["event"] > 10000
    assert [f.model_dump() for f in fast.files] == [f.model_dump() for f in slow.files]
    for f in fast.files:
        assert (tmp_path / "fast" / f.name).read_bytes() == (tmp_path / "slow" / f.name).read_bytes(), f.name
    people = json.loads((tmp_path / "fast" / "person.json").read_text())
    assert people[-1]["id"] == 99 and people[-1]["t_text"] is None
    # connectors.values.timestamp_text: the fraction without trailing zeros, UTC; infinities as asyncpg reads them
    assert {p["ts"] for p in people} >= {"2020-01-01T00:00:00.1234", "9999-12-31T23:59:59.999999"}
    assert {p["tstz"] for p in people} >= {"1999-12-31T23:59:59.000001+00:00", "0999-05-06T07:08:09+00:00",
                                           "0001-01-01T00:00:00"}
    events = json.loads((tmp_path / "fast" / "event.json").read_text())
    assert {"2024-03-01T10:00:01.5+00:00", "2024-03-01T10:00:03+00:00"} <= {e["at"] for e in events}
    for conn in held:
        await connector._pool.release(conn)  # type: ignore[union-attr]


async def test_copy_export_of_a_subject_with_no_rows(make_connector: MakeConnector, db: asyncpg.Connection,
                                                     tmp_path: Path) -> None:
    await fill(db)
    connector = await make_connector(dataset=str(dataset(tmp_path)))
    sink = BundleSink(tmp_path)
    assert (await connector.export(subject("nobody@example.com"), sink)).exported == {}
    assert sink.files == []


class _Collect:
    """A SerialisedWriter keeping what it is given."""

    def __init__(self) -> None:
        self.json, self.csv, self.rows = b"", b"", 0

    async def write_json_bytes(self, data: bytes | memoryview) -> None:
        self.json += bytes(data)

    async def write_csv_bytes(self, data: bytes | memoryview) -> None:
        self.csv += bytes(data)

    def count_rows(self, rows: int) -> None:
        self.rows += rows


async def test_streams_give_the_same_bytes_however_copy_cuts_its_output() -> None:
    """Chunks may end anywhere: inside a row, inside a UTF-8 character, or in a quoted field holding newlines."""
    copy_json = '{"a": "x\\n\\\\"},\n{"a": "😀"},\n{"a": null},\n'.encode()  # one object and a comma a line
    copy_csv = b'1,"two\nlines, ""q"""\n2,\n3,"cr\r\nlf"\n'
    for size in (1, 2, 3, 7, 1000):
        out = _Collect()
        json_stream, csv_stream = JsonStream(out), CsvStream(out)
        for i in range(0, max(len(copy_json), len(copy_csv)), size):
            await json_stream(copy_json[i:i + size])
            await csv_stream(copy_csv[i:i + size])
        json_stream.finish()
        csv_stream.finish()
        assert json.loads(b"[" + out.json + b"]") == [{"a": "x\n\\"}, {"a": "😀"}, {"a": None}]
        assert out.json.endswith(b"}")  # the last row's comma is dropped
        assert out.csv == copy_csv


async def test_a_json_copy_cut_inside_a_row_is_an_error() -> None:
    stream = JsonStream(_Collect())
    await stream(b'{"a": 1},\n{"a"')
    with pytest.raises(ValueError, match="inside a row"):
        stream.finish()


class _FullDisk:
    """A sink taking serialised rows whose CSV file cannot be written."""

    def __init__(self, inner: BundleSink) -> None:
        self.inner = inner

    @asynccontextmanager
    async def collection(self, name: str, fields: Sequence[str]) -> AsyncIterator[Any]:
        async with self.inner.collection(name, fields) as writer:
            yield self._Writer(writer)

    class _Writer:
        def __init__(self, writer: Any) -> None:
            self.write, self.write_json_bytes = writer.write, writer.write_json_bytes
            self.count_rows = writer.count_rows

        async def write_csv_bytes(self, data: bytes | memoryview) -> None:
            raise OSError("No space left on device")


async def test_a_failing_copy_is_a_connector_error_and_leaves_the_connector_usable(
    make_connector: MakeConnector, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await fill(db)
    connector = await make_connector(dataset=str(dataset(tmp_path)))
    (tmp_path / "a").mkdir()
    with pytest.raises(ConnectorError, match=r"^app: export failed: OSError$"):
        await connector.export(subject("copy@example.com"), _FullDisk(BundleSink(tmp_path / "a")))
    (tmp_path / "b").mkdir()
    sink = BundleSink(tmp_path / "b")
    assert (await connector.export(subject("copy@example.com"), sink)).exported["event"] > 10000


async def test_odd_names_are_quoted_and_their_json_keys_escaped(
    make_connector: MakeConnector, db: asyncpg.Connection, tmp_path: Path
) -> None:
    names = ["id", "E-mail", 'Na"me', "back\\slash", "it's"]
    cols = ", ".join(f"{postgres.qi(n)} {'int PRIMARY KEY' if n == 'id' else 'text'}" for n in names)
    await db.execute(f"CREATE TABLE {postgres.qi('Odd T')} ({cols})")
    await db.execute(f"INSERT INTO {postgres.qi('Odd T')} VALUES (1, 'copy@example.com', 'a', 'b\\c', 'd''e')")
    fields = [{"name": n, "data_categories": ["user.behavior"]} for n in names]
    fields[1]["fides_meta"] = {"identity": "email"}
    path = tmp_path / "odd.yml"
    path.write_text(yaml.safe_dump({"dataset": [{"fides_key": "odd", "collections": [
        {"name": "Odd T", "fields": fields}]}]}))
    connector = await make_connector(dataset=str(path))
    fast, slow = await export_both(connector, tmp_path)
    assert fast.exported == slow.exported == {"Odd T": 1}
    for f in fast.files:
        assert (tmp_path / "fast" / f.name).read_bytes() == (tmp_path / "slow" / f.name).read_bytes(), f.name
    assert json.loads((tmp_path / "fast" / "Odd T.json").read_text())[0]['Na"me'] == "a"
