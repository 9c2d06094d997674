"""Fideslang datasets as a graph, and the traversal that finds a data subject's rows in it.

A dataset (the Fides format) names collections and their fields; a field may be an
identity (``fides_meta.identity``), a primary key, or hold ``references`` to fields
of other collections. A reference on ``A.f`` to ``B.g`` with direction ``to`` means
values of ``A.f`` select rows of ``B`` by ``g``; ``from`` is the reverse edge; no
direction means both. Traversal seeds the identity fields with the subject's
identities and follows edges to a fixed point: for a directed acyclic dataset this
is the set of rows Fides itself returns.

Nothing here talks to a database: :func:`traverse` asks a ``fetch`` callback for rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from fideslang.models import Dataset, DatasetField
from pydantic import ValidationError

from connectors.contract import ConfigurationError

Input = tuple[str, str, bool]
"""An input of a collection: (collection, field, whether the values are the subject's identities)."""


@dataclass(frozen=True)
class FieldSpec:
    """One declared field (a column) of a collection."""

    name: str
    categories: tuple[str, ...] = ()
    identity: str | None = None
    primary_key: bool = False
    read_only: bool = False
    length: int | None = None
    """``fides_meta.length``: the most characters the field holds."""
    override: Mapping[str, Any] | None = None
    """``fides_meta.masking_strategy_override`` as ``{"strategy": ..., "configuration": {...}}``."""


@dataclass(frozen=True)
class Edge:
    """Values of ``source.source_field`` select the rows of ``target`` whose ``target_field`` equals one."""

    source: str
    source_field: str
    target: str
    target_field: str


@dataclass
class CollectionSpec:
    """One collection (a table) as the dataset declares it."""

    name: str
    fields: dict[str, FieldSpec]
    delete_rows: bool = False
    """The collection-level override ``masking_strategy_override: {strategy: delete}``."""

    @property
    def primary_key(self) -> tuple[str, ...]:
        """The fields the dataset marks as primary key (may be empty: the database's key is used)."""
        return tuple(f.name for f in self.fields.values() if f.primary_key)

    @property
    def identity_fields(self) -> list[FieldSpec]:
        """Fields that are entry points for a subject's identity."""
        return [f for f in self.fields.values() if f.identity]


class DatasetGraph:
    """The collections of one dataset and the reference edges between them."""

    def __init__(self, dataset: Dataset) -> None:
        """Build the graph; raises ConfigurationError on a reference to an unknown field."""
        self.key = dataset.fides_key
        self.collections: dict[str, CollectionSpec] = {}
        for coll in dataset.collections:
            meta = coll.fides_meta
            if meta is not None and meta.skip_processing:
                continue
            override = meta.masking_strategy_override if meta is not None else None
            self.collections[coll.name] = CollectionSpec(
                name=coll.name,
                fields={f.name: _field_spec(f) for f in coll.fields},
                delete_rows=override is not None and override.strategy.value == "delete",
            )
        edges: dict[Edge, None] = {}
        for coll in dataset.collections:
            if coll.name not in self.collections:
                continue
            for fld in coll.fields:
                for ref in (fld.fides_meta.references or []) if fld.fides_meta else []:
                    if ref.dataset != self.key:
                        continue  # another system's dataset: followed by that system's connector
                    target, _, target_field = ref.field.partition(".")
                    spec = self.collections.get(target)
                    if spec is None or target_field not in spec.fields:
                        raise ConfigurationError(
                            f"dataset {self.key}: {coll.name}.{fld.name} references unknown field {ref.field}"
                        )
                    direction = ref.direction.value if ref.direction else None
                    if direction in (None, "to"):
                        edges[Edge(coll.name, fld.name, target, target_field)] = None
                    if direction in (None, "from"):
                        edges[Edge(target, target_field, coll.name, fld.name)] = None
        self.edges: list[Edge] = list(edges)

    def outgoing(self, collection: str) -> list[Edge]:
        """Edges whose values come from ``collection``."""
        return [e for e in self.edges if e.source == collection]

    def incoming(self, collection: str) -> list[Edge]:
        """Edges that select rows of ``collection``."""
        return [e for e in self.edges if e.target == collection]

    def output_fields(self, collection: str) -> list[str]:
        """Fields of ``collection`` whose values feed other collections."""
        return list(dict.fromkeys(e.source_field for e in self.outgoing(collection)))

    def linked(self, collection: str) -> set[str]:
        """Fields of ``collection`` at either end of a reference: they join rows, so no action rewrites them."""
        ends = [(e.source, e.source_field) for e in self.edges] + [(e.target, e.target_field) for e in self.edges]
        return {f for c, f in ends if c == collection}

    def categories(self) -> set[str]:
        """Every data category some field of the dataset carries."""
        return {c for coll in self.collections.values() for f in coll.fields.values() for c in f.categories}


def _field_spec(fld: DatasetField) -> FieldSpec:
    meta = fld.fides_meta
    override = meta.masking_strategy_override if meta else None
    return FieldSpec(
        name=fld.name,
        categories=tuple(fld.data_categories or ()),
        identity=meta.identity if meta else None,
        primary_key=bool(meta and meta.primary_key),
        read_only=bool(meta and meta.read_only),
        length=meta.length if meta else None,
        override=override.model_dump() if override else None,
    )


def load_dataset(path: str | Path, key: str | None = None) -> DatasetGraph:
    """Read a fideslang YAML file (``dataset: [...]``) and return the graph of one dataset.

    Args:
        path: The YAML file.
        key: The ``fides_key`` of the dataset to use; the first one when None.

    Raises:
        ConfigurationError: The file is missing, not a dataset file, or has no dataset ``key``.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ConfigurationError(f"dataset file {path}: {reason}") from None
    entries = doc.get("dataset") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError(f"dataset file {path}: expected a top-level 'dataset:' list")
    if key is not None:
        entries = [d for d in entries if isinstance(d, dict) and d.get("fides_key") == key]
        if not entries:
            raise ConfigurationError(f"dataset file {path}: no dataset with fides_key {key!r}")
    try:
        dataset = Dataset.model_validate(entries[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigurationError(f"dataset file {path}: invalid at {where}: {first['msg']}") from None
    return DatasetGraph(dataset)


def comparable(value: Any, family: str, *, casefold: bool = False) -> Hashable | None:
    """``value`` in the form a field of type ``family`` is compared with, or None when it cannot match.

    Families: ``int``, ``numeric``, ``uuid``, ``text`` and ``other`` (compared through its text form).
    Values cross between fields of different types (a bigint pointing at a serial, a text id at an
    integer one), so each is converted to the target field's family before it is used or remembered.
    ``casefold`` lowers text (email identities are matched case-insensitively).
    """
    if value is None or (isinstance(value, bool) and family != "other"):
        return None
    try:
        if family == "int":
            number = value if isinstance(value, int) else Decimal(str(value).strip())
            return int(number) if number == int(number) else None
        if family == "numeric":
            return Decimal(str(value).strip())
        if family == "uuid":
            return value if isinstance(value, UUID) else UUID(str(value))
    except (ValueError, ArithmeticError):
        return None
    if isinstance(value, str):
        text = value
    elif hasattr(value, "isoformat"):
        text = value.isoformat()
    else:
        text = str(value)
    return text.lower() if casefold else text


@dataclass
class Reach:
    """What a traversal found: every value each collection input was queried with, and discovery order."""

    inputs: dict[Input, set[Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    """Collections holding at least one of the subject's rows, in the order they were first found."""

    def of(self, collection: str) -> list[tuple[str, bool, set[Any]]]:
        """The non-empty inputs of ``collection`` as (field, is identity, values)."""
        return [(f, ident, v) for (c, f, ident), v in self.inputs.items() if c == collection and v]


Fetch = Callable[[Input, list[Any], list[str]], Awaitable[tuple[bool, Mapping[str, Iterable[Any]]]]]
"""``fetch(input, values, output_fields)`` -> (any row matched, distinct values per output field)."""
Normalize = Callable[[str, str, Any], Hashable | None]
"""``normalize(collection, field, value)`` -> the value as that field is queried with (None: cannot match)."""


async def traverse(
    graph: DatasetGraph, seeds: Mapping[Input, set[Any]], fetch: Fetch, normalize: Normalize
) -> Reach:
    """Follow the dataset's edges from the seeded identity inputs until nothing new is found.

    Each round queries every input with only the values it has not been queried with
    yet, so each value is looked up once per input field and the loop ends on cycles.

    Args:
        graph: The dataset.
        seeds: Identity inputs and their (normalized) values.
        fetch: Queries one input with some values.
        normalize: Converts a value found in one field into the representation of a target field.

    Returns:
        Every input value reached, and the collections found in discovery order.
    """
    reach = Reach(inputs={k: set(v) for k, v in seeds.items() if v})
    pending = {k: set(v) for k, v in reach.inputs.items()}
    rank = {name: i for i, name in enumerate(graph.collections)}
    while pending:
        current, pending = pending, {}
        for inp in sorted(current, key=lambda i: (rank[i[0]], i[1], i[2])):
            collection = inp[0]
            found, outputs = await fetch(inp, list(current[inp]), graph.output_fields(collection))
            if not found:
                continue
            if collection not in reach.order:
                reach.order.append(collection)
            for edge in graph.outgoing(collection):
                target: Input = (edge.target, edge.target_field, False)
                known = reach.inputs.setdefault(target, set())
                for value in outputs.get(edge.source_field, ()):
                    v = normalize(edge.target, edge.target_field, value)
                    if v is not None and v not in known:
                        known.add(v)
                        pending.setdefault(target, set()).add(v)
    return reach
