"""The Postgres connector's other rights against Fides' example: rectify, restrict, stop processing, deactivate.

Fides' example has no switch columns; ``switches`` adds them to the test's database. The
dataset does not declare them: they are operational flags, not personal data.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

import connectors.postgres_config
from connectors.contract import (
    ActionOutcome,
    Capability,
    ConfigurationError,
    ConnectorError,
    UnsupportedError,
)
from connectors.postgres import PostgresConnector
from tests.conftest import fresh_database
from tests.connectors.conftest import CUSTOMER_1, DATASET, JANE, MakeConnector, dump, row, subject

FIDES_JANE = {"customer": 1, "orders": 1, "login": 1, "payment_card": 1, "address": 1}
JANE_KEYS = {
    ("customer", '{"id": 3}'),
    ("address", '{"id": 4}'),
    ("login", '{"id": 8}'),
    ("orders", '{"id": "ord_ddd-eee"}'),
    ("payment_card", '{"id": "pay_ccc-ccc"}'),
}
MARKETING = {"collection": "customer", "field": "marketing_opt_in", "value": False}
DEACTIVATION = {"collection": "customer", "field": "active", "value": False}
FLAG = {"flag_column": "processing_restricted"}
BASE = {Capability.LOCATE, Capability.EXPORT, Capability.ERASE}


SWITCHES = (
    "ALTER TABLE customer ADD COLUMN marketing_opt_in boolean DEFAULT true, "
    "ADD COLUMN active boolean DEFAULT true, ADD COLUMN processing_restricted boolean DEFAULT false"
)


@pytest.fixture
async def switches(db: asyncpg.Connection) -> None:
    """The switch columns the rights' options point at, on customer."""
    await db.execute(SWITCHES)


async def customers(db: asyncpg.Connection, column: str) -> dict[int, Any]:
    """``column`` of every customer, by id."""
    return {r["id"]: r[column] for r in await db.fetch(f"SELECT id, {column} FROM customer")}


async def tags(db: asyncpg.Connection, reference: str | None = None) -> set[tuple[str, str]]:
    """(collection, key as JSON text) in the restriction table, for one reference or all."""
    rows = await db.fetch(
        "SELECT collection, key::text AS key FROM dsr_restriction WHERE reference = coalesce($1, reference)",
        reference,
    )
    return {(r["collection"], r["key"]) for r in rows}


def except_rows(state: dict[str, list[str]], table: str, marker: str) -> dict[str, list[str]]:
    """The dump without the rows of ``table`` whose JSON holds ``marker``."""
    return {t: [r for r in rows if t != table or marker not in r] for t, rows in state.items()}


async def test_rectify_name_changes_only_janes_own_row(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    connector = await make_connector()
    before = await dump(db)
    outcome = await connector.rectify(subject(JANE), {"user.name": "Jane Corrected"})
    assert outcome == ActionOutcome(changed={"customer": 1}, fields=["customer.name"])
    assert (await row(db, "customer", 3))["name"] == "Jane Corrected"
    assert (await row(db, "employee", 2))["name"] == "Jane Employee"  # another Jane, not reached
    after = await dump(db)
    assert except_rows(after, "customer", '"id": 3,') == except_rows(before, "customer", '"id": 3,')
    assert await connector.rectify(subject(JANE), {"user.name": "Jane Corrected"}) == outcome
    assert await dump(db) == after


async def test_rectify_leaves_rows_shared_with_another_person(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    """customer-1's addresses 1 and 2 are also customer 2's: a correction of customer-1's address skips them."""
    connector = await make_connector()
    before = await dump(db)
    outcome = await connector.rectify(subject(CUSTOMER_1), {"user.contact.address.city": "Elsewhere"})
    assert outcome.changed == {} and outcome.ignored == []
    assert await dump(db) == before
    outcome = await connector.rectify(subject(JANE), {"user.contact.address.city": "Elsewhere"})
    assert outcome.changed == {"address": 1} and (await row(db, "address", 4))["city"] == "Elsewhere"


async def test_a_correction_for_a_category_the_system_lacks_is_ignored(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    """No phone field; user.unique_id only on keys and references, which no correction writes."""
    connector = await make_connector()
    corrections = {"user.contact.phone_number": "+1 555 0100", "user.unique_id": "99", "user.name": "J. Customer"}
    outcome = await connector.rectify(subject(JANE), corrections)
    assert outcome.ignored == ["user.contact.phone_number", "user.unique_id"]
    assert outcome.changed == {"customer": 1}
    assert (await row(db, "login", 8))["customer_id"] == 3


async def test_rectify_email_moves_the_identity_and_twice_is_harmless(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    connector = await make_connector()
    new = "jane.new@example.com"
    outcome = await connector.rectify(subject(JANE), {"user.name": "Jane New", "user.contact.email": new})
    assert outcome.changed == {"customer": 1}
    assert sorted(outcome.fields) == ["customer.email", "customer.name"]
    assert {k: (await row(db, "customer", 3))[k] for k in ("email", "name")} == {"email": new, "name": "Jane New"}
    assert (await connector.locate(subject(new))).found == FIDES_JANE
    state = await dump(db)
    again = await connector.rectify(subject(JANE), {"user.name": "Jane New", "user.contact.email": new})
    assert again.changed == {} and again.ignored == []  # the old address finds nobody any more
    assert await dump(db) == state


async def test_identity_collections_are_rectified_last(make_connector: MakeConnector, db: asyncpg.Connection) -> None:
    """customer-1's own service request (alt_email) and customer row both change; its visit key does not."""
    connector = await make_connector()
    new = "customer-1-new@example.com"
    outcome = await connector.rectify(subject(CUSTOMER_1), {"user.contact.email": new})
    assert outcome.changed == {"service_request": 1, "customer": 1}
    assert outcome.fields == ["service_request.alt_email", "customer.email"]
    assert (await row(db, "service_request", "ser_aaa-aaa"))["alt_email"] == new
    assert await db.fetchval("SELECT count(*) FROM visit WHERE email = $1", CUSTOMER_1) == 1  # part of its key


@pytest.mark.parametrize(
    ("corrections", "field"),
    [
        ({"user.name": "J" * 41}, r"customer\.name \(character varying, at most 40 characters\)"),
        ({"user.financial.bank_account": "not a number"}, r"payment_card\.ccn \(bigint\)"),
    ],
)
async def test_a_value_that_does_not_fit_is_refused_naming_the_field(
    make_connector: MakeConnector, db: asyncpg.Connection, corrections: dict[str, str], field: str
) -> None:
    connector = await make_connector()
    before = await dump(db)
    with pytest.raises(ConnectorError, match=field) as info:
        await connector.rectify(subject(JANE), {**corrections, "user.contact.email": "jane.new@example.com"})
    assert info.value.retryable is False
    assert next(iter(corrections.values())) not in str(info.value)
    assert await dump(db) == before  # one transaction: nothing applied


async def test_restrict_with_a_table_tags_every_reached_row(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    connector = await make_connector(restriction=True)
    outcome = await connector.restrict(subject(JANE), "dispute-1")
    assert outcome == ActionOutcome(changed=FIDES_JANE)
    assert await tags(db, "dispute-1") == JANE_KEYS
    first = await db.fetchval("SELECT max(restricted_at) FROM dsr_restriction")
    assert await connector.restrict(subject(JANE), "dispute-1") == outcome  # idempotent
    assert await db.fetchval("SELECT count(*) FROM dsr_restriction") == len(JANE_KEYS)
    assert await db.fetchval("SELECT max(restricted_at) FROM dsr_restriction") == first
    # Shared rows are restricted too: restriction protects, it does not destroy.
    shared = await connector.restrict(subject(CUSTOMER_1), "dispute-2")
    assert shared.changed["address"] == 2
    assert {k for c, k in await tags(db, "dispute-2") if c == "address"} == {'{"id": 1}', '{"id": 2}'}


async def test_flag_mode_sets_the_flag_for_jane_only(
    make_connector: MakeConnector, db: asyncpg.Connection, switches: None
) -> None:
    connector = await make_connector(restriction=FLAG)
    outcome = await connector.restrict(subject(JANE), "dispute-1")
    assert outcome.changed == FIDES_JANE and outcome.fields == ["customer.processing_restricted"]
    assert await customers(db, "processing_restricted") == {1: False, 2: False, 3: True}
    assert await tags(db) == JANE_KEYS  # the table stays the source of truth


async def test_lifting_one_reference_keeps_another(
    make_connector: MakeConnector, db: asyncpg.Connection, switches: None
) -> None:
    connector = await make_connector(restriction=FLAG)
    await connector.restrict(subject(JANE), "dispute-1")
    await connector.restrict(subject(JANE), "objection-7")
    lifted = await connector.lift_restriction(subject(JANE), "dispute-1")
    assert lifted.changed == FIDES_JANE
    assert await tags(db, "dispute-1") == set() and await tags(db, "objection-7") == JANE_KEYS
    assert await customers(db, "processing_restricted") == {1: False, 2: False, 3: True}
    lifted = await connector.lift_restriction(subject(JANE), "objection-7")
    assert lifted == ActionOutcome(changed=FIDES_JANE, fields=["customer.processing_restricted"])
    assert await tags(db) == set()
    assert await customers(db, "processing_restricted") == {1: False, 2: False, 3: False}
    assert await connector.lift_restriction(subject(JANE), "objection-7") == ActionOutcome()


async def test_lifting_before_any_restriction_changes_nothing(
    make_connector: MakeConnector, db: asyncpg.Connection
) -> None:
    connector = await make_connector(restriction=True)
    assert await connector.lift_restriction(subject(JANE), "dispute-1") == ActionOutcome()
    assert await db.fetchval("SELECT to_regclass('dsr_restriction')") is None


async def test_stop_processing_for_marketing_sets_janes_opt_in_only(
    make_connector: MakeConnector, db: asyncpg.Connection, switches: None
) -> None:
    connector = await make_connector(purposes={"marketing": MARKETING})
    outcome = await connector.stop_processing(subject(JANE), "marketing")
    assert outcome == ActionOutcome(changed={"customer": 1}, fields=["customer.marketing_opt_in"])
    assert await customers(db, "marketing_opt_in") == {1: True, 2: True, 3: False}
    assert await connector.stop_processing(subject(JANE), "marketing") == outcome


async def test_an_unconfigured_purpose_is_unsupported(make_connector: MakeConnector, switches: None) -> None:
    connector = await make_connector(purposes={"marketing": MARKETING})
    with pytest.raises(UnsupportedError, match="app does not process data for purpose 'profiling'") as info:
        await connector.stop_processing(subject(JANE), "profiling")
    assert info.value.retryable is False


async def test_deactivate_sets_active_false_and_deletes_nothing(
    make_connector: MakeConnector, db: asyncpg.Connection, switches: None
) -> None:
    connector = await make_connector(deactivation=[DEACTIVATION])
    before = await dump(db)
    outcome = await connector.deactivate(subject(JANE))
    assert outcome == ActionOutcome(changed={"customer": 1}, fields=["customer.active"])
    assert await customers(db, "active") == {1: True, 2: True, 3: False}
    after = await dump(db)
    assert {t: len(rows) for t, rows in after.items()} == {t: len(rows) for t, rows in before.items()}
    assert except_rows(after, "customer", '"id": 3,') == except_rows(before, "customer", '"id": 3,')


async def test_capabilities_reflect_configuration(
    make_connector: MakeConnector, switches: None, tmp_path: Path
) -> None:
    plain = await make_connector()
    assert plain.capabilities == BASE | {Capability.RECTIFY}
    for call in (
        plain.restrict(subject(JANE), "r"),
        plain.lift_restriction(subject(JANE), "r"),
        plain.stop_processing(subject(JANE), "marketing"),
        plain.deactivate(subject(JANE)),
    ):
        with pytest.raises(UnsupportedError):
            await call
    assert (await make_connector(restriction=True)).capabilities == BASE | {Capability.RECTIFY, Capability.RESTRICT}
    assert Capability.STOP_PROCESSING in (await make_connector(purposes={"marketing": MARKETING})).capabilities
    assert Capability.DEACTIVATE in (await make_connector(deactivation=DEACTIVATION)).capabilities
    # A dataset with no personal field a correction may write: no rectification.
    doc = yaml.safe_load(DATASET.read_text())
    doc["dataset"][0]["collections"] = [c for c in doc["dataset"][0]["collections"] if c["name"] == "product"]
    (tmp_path / "products.yml").write_text(yaml.safe_dump(doc))
    products = await make_connector(dataset=str(tmp_path / "products.yml"))
    assert products.capabilities == BASE
    assert await products.rectify(subject(JANE), {"user.name": "x"}) == ActionOutcome(ignored=["user.name"])


async def test_the_documented_toml_example_configures_every_right(
    fides_db: str, switches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example in connectors/postgres_config.py's docstring is valid and opens on Fides' example."""
    doc = connectors.postgres_config.__doc__ or ""
    example = re.search(r"::\n\n(.*?)\n\n[A-Z]", doc, re.S)
    assert example is not None
    system = tomllib.loads(example.group(1))["systems"]["shop"]
    monkeypatch.setenv("SHOP_DATABASE_URL", fides_db)
    monkeypatch.setenv("SHOP_HASH_SECRET", "x")
    options = {k: v for k, v in system.items() if k != "type"}
    options["dataset"] = str(DATASET.parent / options["dataset"])
    connector = PostgresConnector.from_options("shop", options)
    await connector.open()
    try:
        assert connector.capabilities == set(Capability)
        assert (await connector.deactivate(subject(JANE))).changed == {"customer": 1}
    finally:
        await connector.close()


OPEN_ERRORS = [
    (
        {"purposes": {"marketing": {**MARKETING, "field": "marketing_opt_inn"}}},
        "app: purposes.marketing: table public.customer has no column marketing_opt_inn",
    ),
    ({"deactivation": {**DEACTIVATION, "collection": "accounts"}}, "deactivation: unknown collection 'accounts'"),
    ({"deactivation": {**DEACTIVATION, "field": "id"}}, "deactivation: customer.id is a key or a reference"),
    ({"deactivation": {**DEACTIVATION, "field": "address_id"}}, "customer.address_id is a key or a reference"),
    ({"deactivation": {**DEACTIVATION, "value": "nope"}}, "value 'nope' does not fit public.customer.active (boolean)"),
    ({"restriction": {"flag_column": "restricted"}}, "flag_column 'restricted' is a column of no table of the dataset"),
    ({"restriction": {"flag_column": "name"}}, "flag_column public.customer.name is character varying, not boolean"),
    ({"restriction": "customer"}, "restriction.table 'customer' is a collection of the dataset"),
    ({"restriction": "odd_restriction"}, "restriction.table public.odd_restriction exists without the columns"),
]


@pytest.fixture(scope="module")
async def checked_db(pg: Any, fides_template: str) -> str:
    """One database for the checks at open (they only read it): switches and a foreign restriction table."""
    url = await fresh_database(pg, "fides", template=fides_template)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SWITCHES + "; CREATE TABLE odd_restriction (id int)")
    finally:
        await conn.close()
    return url


@pytest.mark.parametrize(("options", "message"), OPEN_ERRORS)
async def test_bad_rights_configuration_is_one_clear_line_at_open(
    checked_db: str, options: dict[str, Any], message: str
) -> None:
    connector = PostgresConnector.from_options("app", {"dsn": checked_db, "dataset": str(DATASET), **options})
    with pytest.raises(ConfigurationError) as info:
        await connector.open()
    text = str(info.value)
    assert text.startswith("app: ") and message in text and "\n" not in text


OPTION_ERRORS = [
    ({"restriction": {"tabel": "x"}}, "restriction.tabel: Extra inputs are not permitted"),
    (
        {"purposes": {"marketing": {"collection": "customer", "field": "x"}}},
        "purposes.marketing.0.value: Field required",
    ),
    ({"purposes": {"marketing": []}}, "each purpose needs a name and at least one"),
    ({"deactivation": {"collection": "customer", "field": "active", "value": [1]}}, "deactivation.0.value"),
]


@pytest.mark.parametrize(("options", "message"), OPTION_ERRORS)
def test_bad_rights_options_are_one_clear_line(
    options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DSN", "postgresql://unused/db")
    with pytest.raises(ConfigurationError) as info:
        PostgresConnector.from_options("app", {"dsn_env": "APP_DSN", "dataset": str(DATASET), **options})
    text = str(info.value)
    assert text.startswith("systems.app: ") and message in text and "\n" not in text

