"""In-memory test doubles of the orchestrator's side of the contract, for tests and integration teams.

- :class:`MemoryPlanStore` implements :class:`connectors.contract.PlanStore` with the
  semantics of the orchestrator's durable store: ``has_plan`` is true only once the
  plan is sealed (an unsealed plan left by a crash is discarded), items are stored as
  JSON (so a connector that puts non-JSON values in a plan fails here as it would in
  production), ``pending`` yields items not yet marked done, in plan order.
- :class:`MemorySink` implements :class:`connectors.contract.ExportSink` and keeps the
  rows in lists; it checks each row holds exactly the announced fields and is JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from connectors.contract import PlanItem


class MemoryPlanStore:
    """An erasure plan kept in memory. Implements ``connectors.contract.PlanStore``."""

    def __init__(self) -> None:
        """Start with no plan."""
        self._items: dict[int, str] = {}
        self._done: set[int] = set()
        self._next_id = 1
        self.sealed = False

    async def has_plan(self) -> bool:
        """Whether a sealed plan exists; an unsealed one (crash while planning) is discarded."""
        if not self.sealed:
            self._items.clear()
            self._done.clear()
        return self.sealed

    async def save(self, items: Sequence[PlanItem]) -> None:
        """Append items (stored as JSON) to the unsealed plan."""
        if self.sealed:
            raise RuntimeError("the plan is sealed")
        for item in items:
            self._items[self._next_id] = item.model_dump_json()
            self._next_id += 1

    async def seal(self) -> None:
        """Mark the plan complete."""
        self.sealed = True

    async def pending(self, batch_size: int) -> AsyncIterator[list[tuple[int, PlanItem]]]:
        """Batches of items not yet done, in plan order (what is marked done meanwhile is skipped)."""
        last = 0
        while True:
            ids = [i for i in sorted(self._items) if i > last and i not in self._done][:batch_size]
            if not ids:
                return
            last = ids[-1]
            yield [(i, PlanItem.model_validate_json(self._items[i])) for i in ids]

    async def mark_done(self, item_ids: Sequence[int]) -> None:
        """Record that these items were applied."""
        self._done.update(item_ids)

    async def record(self, items: Mapping[int, PlanItem]) -> None:
        """Store these items again (as JSON) as they are now; their place and state stay."""
        unknown = set(items) - set(self._items)
        if unknown:
            raise KeyError(f"no plan items {sorted(unknown)}")
        for item_id, item in items.items():
            self._items[item_id] = item.model_dump_json()

    async def items(self) -> AsyncIterator[PlanItem]:
        """Every item, applied or not, in plan order."""
        for i in sorted(self._items):
            yield PlanItem.model_validate_json(self._items[i])

    def forget_done(self) -> None:
        """Forget which items were applied, as if every batch's ``mark_done`` had been lost."""
        self._done.clear()

    @property
    def all_items(self) -> list[PlanItem]:
        """Every item (synchronously, for assertions)."""
        return [PlanItem.model_validate_json(self._items[i]) for i in sorted(self._items)]

    @property
    def done_count(self) -> int:
        """How many items are marked done."""
        return len(self._done)


class MemoryWriter:
    """Collects the rows of one collection."""

    def __init__(self, name: str, fields: Sequence[str], rows: list[dict[str, Any]]) -> None:
        """Write into ``rows``."""
        self.name = name
        self.fields = list(fields)
        self.rows = rows

    async def write(self, row: Mapping[str, Any]) -> None:
        """Append one row; it must hold exactly the announced fields and be JSON-serialisable."""
        if list(row) != self.fields:
            raise ValueError(f"{self.name}: row fields {list(row)} differ from announced {self.fields}")
        json.dumps(dict(row))
        self.rows.append(dict(row))


class MemorySink:
    """An export sink that keeps rows in lists. Implements ``connectors.contract.ExportSink``."""

    def __init__(self) -> None:
        """Start empty."""
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.fields: dict[str, list[str]] = {}

    @asynccontextmanager
    async def collection(self, name: str, fields: Sequence[str]) -> AsyncIterator[MemoryWriter]:
        """Open a writer for ``name``; a collection may be opened once."""
        if name in self.rows:
            raise ValueError(f"collection {name!r} opened twice")
        self.fields[name] = list(fields)
        self.rows[name] = []
        yield MemoryWriter(name, fields, self.rows[name])

    @property
    def counts(self) -> dict[str, int]:
        """Rows written per collection."""
        return {name: len(rows) for name, rows in self.rows.items()}
