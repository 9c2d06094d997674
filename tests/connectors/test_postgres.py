"""The Postgres connector against Fides' example: locate, export, reference traversal, configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from connectors.contract import Capability, ConfigurationError, Subject
from connectors.postgres import PostgresConnector, qi
from connectors.testing import MemoryPlanStore, MemorySink
from connectors.values import jsonable
from tests.connectors.conftest import DATASET, EXAMPLE_POLICY, MakeConnector, hashed, subject

JANE = "jane@example.com"
FIDES_JANE = {"customer": 1, "orders": 1, "login": 1, "payment_card": 1, "address": 1}
NOT_JANE = {"employee", "report", "visit", "service_request", "order_item", "product"}


def declared_fields() -> dict[str, list[str]]:
    """Field names per collection, read straight from the dataset file."""
    doc = yaml.safe_load(DATASET.read_text())["dataset"][0]
    return {c["name"]: [f["name"] for f in c["fields"]] for c in doc["collections"]}


async def db_rows(db: asyncpg.Connection, collection: str, where: str, *args: Any) -> list[dict[str, Any]]:
    """The declared fields of some rows, read directly, in the JSON form the export uses."""
    fields = declared_fields()[collection]
    rows = await db.fetch(
        f"SELECT {', '.join(qi(f) for f in fields)} FROM {qi(collection)} WHERE {where}", *args
    )
    return sorted(
        ({f: jsonable(r[f]) for f in fields} for r in rows), key=lambda r: json.dumps(r, sort_keys=True)
    )


def sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


async def test_access_for_jane_matches_fides(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    """Fides' own assertion: one row in each of five collections, nothing elsewhere, declared fields only."""
    connector = await make_connector()
    # Rectify comes with a dataset that declares personal fields; the other rights need options.
    assert connector.capabilities == {Capability.LOCATE, Capability.EXPORT, Capability.ERASE, Capability.RECTIFY}

    located = await connector.locate(subject(JANE))
    assert located.found == FIDES_JANE

    sink = MemorySink()
    outcome = await connector.export(subject(JANE), sink)
    assert outcome.exported == FIDES_JANE
    assert sink.counts == FIDES_JANE
    assert not NOT_JANE & set(sink.rows)
    declared = declared_fields()
    for collection, rows in sink.rows.items():
        assert sink.fields[collection] == declared[collection]
        assert all(list(row) == declared[collection] for row in rows)
    # The rows are the database's rows (undeclared columns such as orders.payment_card_id left out).
    assert sink.rows["customer"] == await db_rows(db, "customer", "email = $1", JANE)
    assert sink.rows["customer"][0]["created"] == "2020-04-01T11:47:42"
    assert sink.rows["orders"] == await db_rows(db, "orders", "customer_id = 3")
    assert "payment_card_id" not in sink.rows["orders"][0]
    assert sink.rows["login"] == await db_rows(db, "login", "customer_id = 3")
    assert sink.rows["payment_card"] == await db_rows(db, "payment_card", "customer_id = 3")
    assert sink.rows["address"] == await db_rows(db, "address", "id = 4")


async def test_identity_is_matched_case_insensitively(make_connector: MakeConnector) -> None:
    connector = await make_connector()
    assert (await connector.locate(subject("JANE@Example.COM"))).found == FIDES_JANE


async def test_unknown_subject_finds_nothing_and_opens_no_collection(make_connector: MakeConnector) -> None:
    connector = await make_connector()
    assert (await connector.locate(subject("nobody@example.com"))).found == {}
    sink = MemorySink()
    assert (await connector.export(subject("nobody@example.com"), sink)).exported == {}
    assert sink.rows == {}
    other = await connector.locate(Subject(request_id="r", identities={"phone": "+1 555 0100"}))
    assert other.found == {}


async def test_reference_traversal_follows_to_and_from_edges(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    """customer-1: identity tables, then orders/login/cards, order_item, product."""
    connector = await make_connector()
    who = subject("customer-1@example.com")
    expected = {
        "customer": 1,
        "service_request": 1,
        "visit": 1,  # identity entry points
        "login": 6,
        "orders": 3,
        "payment_card": 1,  # direction "from" customer.id
        "address": 2,  # "to" address.id from customer.address_id (1) and orders.shipping_address_id (1, 2)
        "order_item": 4,  # "from" orders.id
        "product": 2,  # "to" product.id from order_item.product_id
    }
    assert (await connector.locate(who)).found == expected
    sink = MemorySink()
    await connector.export(who, sink)
    assert sink.counts == expected
    assert sorted_rows(sink.rows["address"]) == await db_rows(db, "address", "id = ANY($1::int[])", [1, 2])
    assert sorted_rows(sink.rows["order_item"]) == await db_rows(
        db, "order_item", "order_id = ANY($1::text[])", ["ord_aaa-aaa", "ord_ccc-ccc", "ord_ddd-ddd"]
    )
    assert sorted_rows(sink.rows["product"]) == await db_rows(db, "product", "id IN (1, 2)")
    assert sink.rows["product"][0] == {
        "id": 1,
        "name": "The Choco Chip",
        "price": "$20.00",
    }  # no description/url
    assert "item_no" not in sink.rows["order_item"][0]  # the table's key column, not declared


async def test_from_edge_reaches_rows_of_other_identities(make_connector: MakeConnector) -> None:
    """service_request.employee_id is 'from' employee.id: employee-1 reaches the three requests it handled."""
    connector = await make_connector()
    sink = MemorySink()
    await connector.export(subject("employee-1@example.com"), sink)
    assert sink.counts == {"employee": 1, "address": 1, "service_request": 3}
    assert {r["id"] for r in sink.rows["service_request"]} == {"ser_aaa-aaa", "ser_bbb-bbb", "ser_ccc-ccc"}
    assert sink.rows["address"][0]["id"] == 3


def variant_dataset(tmp_path: Path, edit: Any) -> Path:
    """A copy of Fides' dataset changed by ``edit(collections_by_name)``."""
    doc = yaml.safe_load(DATASET.read_text())
    edit({c["name"]: c for c in doc["dataset"][0]["collections"]})
    path = tmp_path / "dataset.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_reference_without_direction_is_followed_both_ways(
    make_connector: MakeConnector, tmp_path: Path
) -> None:
    """employee.address_id <-> address.id: employee-1 -> address 3 -> employee 2 -> its service request."""

    def both_ways(colls: dict[str, Any]) -> None:
        ref = next(f for f in colls["employee"]["fields"] if f["name"] == "address_id")["fides_meta"]
        del ref["references"][0]["direction"]

    connector = await make_connector(dataset=str(variant_dataset(tmp_path, both_ways)))
    sink = MemorySink()
    await connector.export(subject("employee-1@example.com"), sink)
    assert sink.counts == {"employee": 2, "address": 1, "service_request": 4}
    assert {r["email"] for r in sink.rows["employee"]} == {"employee-1@example.com", "employee-2@example.com"}


async def test_export_streams_many_rows(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO login SELECT g, 3, now() FROM generate_series(100, 5099) AS g")
    connector = await make_connector(batch_size=100)
    sink = MemorySink()
    outcome = await connector.export(subject(JANE), sink)
    assert (
        outcome.exported["login"]
        == 5001
        == await db.fetchval("SELECT count(*) FROM login WHERE customer_id = 3")
    )
    assert [r["id"] for r in sink.rows["login"]] == [8, *range(100, 5100)]


async def test_identifiers_are_quoted(
    make_connector: MakeConnector, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Names with quotes, spaces and dashes work: identifiers are quoted, values are parameters."""
    table = qi('Odd "Table"')
    await db.execute(f'CREATE TABLE {table} (id int PRIMARY KEY, "E-mail" varchar(100), "Na me" text)')
    await db.execute(
        f"INSERT INTO {table} VALUES (1, $1, 'a'), (2, $2, 'b')", "x'; DROP TABLE customer; --", JANE
    )
    doc = {
        "dataset": [
            {
                "fides_key": "odd",
                "collections": [
                    {
                        "name": 'Odd "Table"',
                        "fields": [
                            {
                                "name": "E-mail",
                                "data_categories": ["user.contact.email"],
                                "fides_meta": {"identity": "email"},
                            },
                            {"name": "Na me", "data_categories": ["user.name"]},
                            {
                                "name": "id",
                                "data_categories": ["system.operations"],
                                "fides_meta": {"primary_key": True},
                            },
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "odd.yml"
    path.write_text(yaml.safe_dump(doc))
    policy = {"rules": [{"categories": ["user.contact.email"], "strategy": "hash"}]}
    connector = await make_connector(dataset=str(path), policy=policy)
    assert (await connector.locate(subject("x'; DROP TABLE customer; --"))).found == {'Odd "Table"': 1}
    sink = MemorySink()
    await connector.export(subject(JANE), sink)
    assert sink.rows == {'Odd "Table"': [{"E-mail": JANE, "Na me": "b", "id": 2}]}
    await connector.erase(subject(JANE), MemoryPlanStore(), lambda _: None)
    rows = await db.fetch(f"SELECT * FROM {table} ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "x'; DROP TABLE customer; --", "a"), (2, hashed(JANE), None)]
    assert await db.fetchval("SELECT count(*) FROM customer") == 3


async def test_from_options_accepts_policy_file(make_connector: MakeConnector, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[policy]\ndefault_strategy = "null_rewrite"\n[[policy.retain]]\ncollection = "orders"\n'
        'ground = "tax"\n'
    )
    connector = await make_connector(policy_file=str(policy))
    assert connector.policy.collections["orders"].ground == "tax"


CONFIG_ERRORS = [
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ({"dataset": "/nonexistent/dataset.yml"}, "dataset file /nonexistent/dataset.yml"),
    ({"dataset_key": "nope"}, "no dataset with fides_key 'nope'"),
    ({"batch_size": 0}, "batch_size"),
    ({"dsn": "postgresql://x"}, "set exactly one of dsn_env"),
    ({"dsn_env": "APP_UNSET_DSN"}, "environment variable APP_UNSET_DSN (dsn_env) is not set"),
    ({"policy": {"rules": [{"categories": ["user"], "strategy": "shred"}]}}, "policy.rules.0.strategy"),
    ({"policy": {"rules": [{"strategy": "hash"}]}}, "a rule needs categories or collections"),
    ({"policy": {"retain": [{"collection": "orders"}]}}, "policy.retain.0.ground: Field required"),
    ({"policy": {"retain": [{"collection": "orders", "ground": ""}]}}, "policy.retain.0.ground"),
    (
        {"policy": {"rules": [{"categories": ["user.contact.emial"], "strategy": "hash"}]}},
        "unknown data category 'user.contact.emial'",
    ),
    ({"policy": {"retain": [{"collection": "invoices", "ground": "tax"}]}}, "unknown collection 'invoices'"),
    (
        {"hash_secret_env": None, "policy": EXAMPLE_POLICY},
        "customer.email uses the hash strategy, but hash_secret_env",
    ),
    (
        {"hash_secret_env": "APP_UNSET_SECRET", "policy": EXAMPLE_POLICY},
        "environment variable APP_UNSET_SECRET (hash_secret_env) is not set",
    ),
    ({"policy": {}, "policy_file": "/nonexistent/policy.toml"}, "set policy or policy_file, not both"),
]


@pytest.mark.parametrize(("options", "message"), CONFIG_ERRORS)
def test_bad_configuration_is_one_clear_line(
    options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DSN", "postgresql://unused/db")  # checked before any connection
    monkeypatch.setenv("APP_HASH_SECRET", "x")
    base = {"dsn_env": "APP_DSN", "dataset": str(DATASET), "hash_secret_env": "APP_HASH_SECRET"}
    if "dsn_env" in options:
        del base["dsn_env"]
    with pytest.raises(ConfigurationError) as info:
        PostgresConnector.from_options("app", {**base, **options})
    text = str(info.value)
    assert text.startswith("systems.app: ") and message in text and "\n" not in text
    assert info.value.retryable is False


async def test_dataset_must_match_the_tables(make_connector: MakeConnector, tmp_path: Path) -> None:
    def ghost(colls: dict[str, Any]) -> None:
        colls["visit"]["fields"].append({"name": "ghost", "data_categories": ["user.name"]})

    with pytest.raises(ConfigurationError, match=r"table public\.visit has no column ghost"):
        await make_connector(dataset=str(variant_dataset(tmp_path, ghost)))
