"""Options of a ``type = "postgres"`` system, their checks against the dataset and the database, SQL basics.

``from_options`` validates the TOML options (:class:`PostgresConfig`); ``open()`` reads the
tables' columns and keys (:func:`read_schema`) and checks the dataset, the erasure policy and
the rights' settings against them (:func:`check_tables`, :func:`check_policy`,
:func:`check_rights`). Every problem is one line, raised as :class:`ConfigurationError`.
Quoting (:func:`qi`) and the mapping of driver errors (:func:`db_errors`) live here too,
shared by the connector and its rights.

A full example (only ``dataset`` and one of ``dsn_env``/``dsn`` are required)::

    [systems.shop]
    type = "postgres"
    dsn_env = "SHOP_DATABASE_URL"
    dataset = "postgres_example_test_dataset.yml"
    hash_secret_env = "SHOP_HASH_SECRET"

    [systems.shop.policy]                     # erasure (see connectors.masking)
    default_strategy = "null_rewrite"

    [systems.shop.restriction]                # or `restriction = true` for the defaults
    table = "dsr_restriction"                 # the source of truth, created when missing
    flag_column = "processing_restricted"     # optional visible mirror, in tables that have it

    [systems.shop.purposes]                   # stop_processing(purpose)
    marketing = {collection = "customer", field = "marketing_opt_in", value = false}

    [systems.shop.deactivation]               # deactivate(); a list of such tables also works
    collection = "customer"
    field = "active"
    value = false

Purpose, deactivation and flag columns are operational switches: the dataset need not
declare them (it describes personal data), but the table must have them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.contract import ConfigurationError, ConnectorError
from connectors.fides import DatasetGraph
from connectors.masking import TEXT_STRATEGIES, ErasurePolicy, PolicyConfig, secret_bytes
from connectors.values import text_param

FAMILIES = {"smallint": "int", "integer": "int", "bigint": "int", "numeric": "numeric", "uuid": "uuid",
            "character varying": "text", "character": "text", "text": "text"}
"""Column types by the family :func:`connectors.fides.comparable` compares them in (else ``other``)."""
RESTRICTION_COLUMNS = ("collection", "key", "reference", "restricted_at")
_RETRYABLE_SQLSTATE_CLASSES = {"08", "40", "53", "55", "57", "58"}


def qi(name: str) -> str:
    """Quote an SQL identifier (doubling any double quote inside it)."""
    return '"' + name.replace('"', '""') + '"'


@asynccontextmanager
async def db_errors(name: str, operation: str) -> AsyncIterator[None]:
    """Turn driver errors into ConnectorError: SQLSTATE and class names only, never values."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        state = str(getattr(exc, "sqlstate", "") or "")
        retryable = state[:2] in _RETRYABLE_SQLSTATE_CLASSES
        raise ConnectorError(f"{name}: {operation} failed: PostgreSQL error {state} "
                             f"({type(exc).__name__})", retryable=retryable) from exc
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        raise ConnectorError(f"{name}: {operation} failed: {type(exc).__name__}") from exc


def first_error(exc: ValidationError) -> str:
    """The first validation error as ``loc: message`` on one line."""
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return (f"{where}: " if where else "") + str(err["msg"]).splitlines()[0]


class RestrictionConfig(BaseModel):
    """``restriction``: how processing is restricted (GDPR Art. 18, Recital 67).

    The restriction table always records which rows each reference restricts (its rows
    are the truth); ``flag_column``, where a table has it, mirrors that as a boolean.
    """

    model_config = ConfigDict(extra="forbid")

    table: str = Field(default="dsr_restriction", min_length=1,
                       description="Table (in the system's schema) tagging restricted rows; created when missing.")
    flag_column: str | None = Field(default=None, min_length=1,
                                    description="Boolean column set true while any reference restricts the row.")


class FieldSetting(BaseModel):
    """``{collection, field, value}``: a column set on the subject's own rows of a collection."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, description="A collection of the dataset.")
    field: str = Field(min_length=1, description="A column of its table (the dataset need not declare it).")
    value: bool | int | float | str = Field(description="The value written, e.g. false.")


def _settings(value: Any) -> Any:
    """One ``{collection, field, value}`` table or a list of them, as a list."""
    return [value] if isinstance(value, dict) else value


class PostgresConfig(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "postgres"``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dsn_env: str | None = Field(default=None, description="Environment variable holding the DSN.")
    dsn: str | None = Field(default=None, description="The DSN itself: for tests and development only.")
    dataset: Path = Field(description="fideslang YAML file (``dataset: [...]``).")
    dataset_key: str | None = Field(default=None, description="The dataset's fides_key; the first if absent.")
    db_schema: str = Field(default="public", alias="schema", description="Schema holding the tables.")
    batch_size: int = Field(default=500, ge=1, le=100_000, description="Rows per erasure transaction.")
    range_rows: int = Field(
        default=5_000, ge=1, le=1_000_000,
        description="Keys per planned key range, where a collection's rows all get the same change: the table's "
                    "keys where the subject holds most of the table (PostgreSQL 13 or later counts them as they "
                    "change), else the subject's.")
    batch_seconds: float = Field(
        default=0.2, gt=0, le=5,
        description="Target seconds of one erasure transaction of key ranges: consecutive ranges are applied "
                    "together, as many as the last transaction's time says fit.")
    hash_secret_env: str | None = Field(default=None, description="Environment variable with the HMAC key.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The erasure policy.")
    policy_file: Path | None = Field(default=None, description="A TOML file holding the policy instead.")
    restriction: RestrictionConfig | None = Field(
        default=None, description="Restriction of processing: true, a table name, or {table, flag_column}.")
    purposes: dict[str, list[FieldSetting]] = Field(
        default_factory=dict, description="Purpose (e.g. marketing) -> the switch(es) that stop it.")
    deactivation: list[FieldSetting] = Field(
        default_factory=list, description="The switch(es) that make the account stop working.")

    @field_validator("restriction", mode="before")
    @classmethod
    def _restriction(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {} if value else None
        return {"table": value} if isinstance(value, str) else value

    @field_validator("purposes", mode="before")
    @classmethod
    def _purposes(cls, value: Any) -> Any:
        return {k: _settings(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("deactivation", mode="before")
    @classmethod
    def _deactivation(cls, value: Any) -> Any:
        return _settings(value)

    @model_validator(mode="after")
    def _check(self) -> PostgresConfig:
        if bool(self.dsn) == bool(self.dsn_env):
            raise ValueError("set exactly one of dsn_env (production) or dsn (tests)")
        if any(not name or not settings for name, settings in self.purposes.items()):
            raise ValueError("purposes: each purpose needs a name and at least one {collection, field, value}")
        if self.policy_file is not None:
            if "policy" in self.model_fields_set:
                raise ValueError("set policy or policy_file, not both")
            try:
                doc = tomllib.loads(self.policy_file.read_text())
                self.policy = PolicyConfig.model_validate(doc.get("policy", doc))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"policy_file {self.policy_file}: {exc}") from None
            except ValidationError as exc:
                raise ValueError(f"policy_file {self.policy_file}: {first_error(exc)}") from None
        return self

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> PostgresConfig:
        """Validate the options (and that the DSN is at hand); one line when they are wrong.

        Raises:
            ConfigurationError: The first problem, as ``option.path: message``.
        """
        try:
            config = cls.model_validate(dict(options))
        except ValidationError as exc:
            raise ConfigurationError(first_error(exc)) from None
        config.resolve_dsn()
        return config

    def resolve_dsn(self) -> str:
        """The DSN, from the environment unless given directly."""
        value = self.dsn or os.environ.get(self.dsn_env or "")
        if not value:
            raise ConfigurationError(f"environment variable {self.dsn_env} (dsn_env) is not set")
        return value

    def hash_secret(self) -> tuple[bytes | None, str]:
        """The HMAC key for the hash strategy, or None and why it is missing."""
        if not self.hash_secret_env:
            return None, "hash_secret_env is not set"
        value = os.environ.get(self.hash_secret_env)
        if not value:
            return None, f"environment variable {self.hash_secret_env} (hash_secret_env) is not set"
        return secret_bytes(value), ""

    def settings(self) -> list[tuple[str, FieldSetting]]:
        """Every purpose and deactivation setting, each with the option path naming it."""
        out = [(f"purposes.{name}", s) for name, settings in self.purposes.items() for s in settings]
        return out + [("deactivation", s) for s in self.deactivation]


@dataclass(frozen=True)
class Column:
    """A table column as ``information_schema.columns`` describes it."""

    sql_type: str
    cast: str
    family: str
    max_length: int | None


@dataclass
class Schema:
    """The columns (by table) and primary keys of the tables the connector uses."""

    columns: dict[str, dict[str, Column]] = field(default_factory=dict)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)


async def read_schema(conn: asyncpg.Pool | asyncpg.Connection, schema: str, tables: list[str]) -> Schema:
    """Columns and primary keys of ``tables`` in ``schema`` (tables that do not exist are absent)."""
    out = Schema()
    columns = await conn.fetch(
        """SELECT table_name, column_name, data_type, udt_schema, udt_name, character_maximum_length
           FROM information_schema.columns WHERE table_schema = $1 AND table_name = ANY($2::text[])""",
        schema, tables)
    keys = await conn.fetch(
        """SELECT k.table_name, k.column_name FROM information_schema.table_constraints c
           JOIN information_schema.key_column_usage k ON k.constraint_schema = c.constraint_schema
            AND k.constraint_name = c.constraint_name AND k.table_name = c.table_name
           WHERE c.table_schema = $1 AND c.constraint_type = 'PRIMARY KEY' AND c.table_name = ANY($2::text[])
           ORDER BY k.table_name, k.ordinal_position""",
        schema, tables)
    for r in columns:
        family = FAMILIES.get(r["data_type"], "text" if r["udt_name"] == "citext" else "other")
        out.columns.setdefault(r["table_name"], {})[r["column_name"]] = Column(
            r["data_type"], f"{qi(r['udt_schema'])}.{qi(r['udt_name'])}", family, r["character_maximum_length"])
    for r in keys:
        out.keys[r["table_name"]] = (*out.keys.get(r["table_name"], ()), r["column_name"])
    return out


def check_tables(name: str, graph: DatasetGraph, db: Schema, schema: str) -> None:
    """Every collection of the dataset is a table holding every declared field."""
    for coll, spec in graph.collections.items():
        if coll not in db.columns:
            raise ConfigurationError(f"{name}: collection {coll!r} has no table {schema}.{coll}")
        missing = [f for f in spec.fields if f not in db.columns[coll]]
        if missing:
            raise ConfigurationError(f"{name}: table {schema}.{coll} has no column {', '.join(missing)}")


def check_policy(name: str, policy: ErasurePolicy, db: Schema, schema: str) -> None:
    """Text-writing strategies are used on text columns long enough for what they write."""
    for coll, cp in policy.collections.items():
        for fld, masker in cp.maskers.items():
            col, where = db.columns[coll][fld], f"{schema}.{coll}.{fld}"
            if masker.strategy in TEXT_STRATEGIES and col.family != "text":
                raise ConfigurationError(f"{name}: the {masker.strategy} strategy needs a text "
                                         f"column, but {where} is {col.sql_type}")
            if masker.strategy in TEXT_STRATEGIES and masker.output_length > (col.max_length or 1 << 30):
                raise ConfigurationError(f"{name}: the {masker.strategy} strategy writes "
                                         f"{masker.output_length} characters, but {where} holds at most "
                                         f"{col.max_length}")


async def fits(conn: asyncpg.Pool | asyncpg.Connection, column: Column, value: Any, limit: int | None) -> bool:
    """Whether ``value`` can be written to ``column`` (at most ``limit`` characters for text)."""
    text = text_param(value)
    if text is None:
        return True
    if column.family == "text":
        return limit is None or len(text) <= limit
    try:
        await conn.fetchval(f"SELECT $1::text::{column.cast}", text)
    except asyncpg.DataError:
        return False
    return True


async def check_rights(name: str, config: PostgresConfig, graph: DatasetGraph, db: Schema,
                       pool: asyncpg.Pool) -> None:
    """The restriction, purpose and deactivation settings name real collections and columns."""
    schema = config.db_schema
    for where, s in config.settings():
        if s.collection not in graph.collections:
            raise ConfigurationError(f"{name}: {where}: unknown collection {s.collection!r} (not in the dataset)")
        column = db.columns[s.collection].get(s.field)
        if column is None:
            raise ConfigurationError(f"{name}: {where}: table {schema}.{s.collection} has no column {s.field}")
        keys = (*db.keys.get(s.collection, ()), *graph.collections[s.collection].primary_key)
        if s.field in keys or s.field in graph.linked(s.collection):
            raise ConfigurationError(f"{name}: {where}: {s.collection}.{s.field} is a key or a reference")
        if not await fits(pool, column, s.value, column.max_length):
            raise ConfigurationError(f"{name}: {where}: value {s.value!r} does not fit "
                                     f"{schema}.{s.collection}.{s.field} ({column.sql_type})")
    restriction = config.restriction
    if restriction is None:
        return
    if restriction.table in graph.collections:
        raise ConfigurationError(f"{name}: restriction.table {restriction.table!r} is a collection of the dataset")
    existing = db.columns.get(restriction.table)
    if existing is not None and not set(RESTRICTION_COLUMNS) <= set(existing):
        raise ConfigurationError(f"{name}: restriction.table {schema}.{restriction.table} exists without the "
                                 f"columns {', '.join(RESTRICTION_COLUMNS)}")
    flag = restriction.flag_column
    if flag is None:
        return
    flagged = {coll: db.columns[coll][flag] for coll in graph.collections if flag in db.columns[coll]}
    if not flagged:
        raise ConfigurationError(f"{name}: restriction.flag_column {flag!r} is a column of no table of the dataset")
    for coll, column in flagged.items():
        if column.sql_type != "boolean":
            raise ConfigurationError(f"{name}: restriction.flag_column {schema}.{coll}.{flag} is "
                                     f"{column.sql_type}, not boolean")
