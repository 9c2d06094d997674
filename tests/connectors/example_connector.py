"""A newsletter list kept in a JSON file: the example connector of connectors/README.md.

The file holds ``{"subscribers": [{"email": ..., "name": ..., "topics": [...]}]}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.contract import (
    Capability,
    ConfigurationError,
    Connector,
    ErasureOutcome,
    ExportOutcome,
    ExportSink,
    LocateOutcome,
    PlanItem,
    PlanStore,
    ProgressReporter,
    Subject,
    VerificationOutcome,
)

FIELDS = ["email", "name", "topics"]


class NewsletterOptions(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "newsletter"``."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not a silent default

    path: Path = Field(description="The JSON file holding the list.")


class NewsletterConnector(Connector):
    """Subscribers found by email: locate, export, erase (the entry is deleted)."""

    type_name = "newsletter"
    capabilities = frozenset({Capability.LOCATE, Capability.EXPORT, Capability.ERASE})

    def __init__(self, name: str, options: NewsletterOptions) -> None:
        super().__init__(name)
        self.options = options

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> NewsletterConnector:
        """Build from ``[systems.<name>]``; one line naming the option when it is wrong."""
        try:
            return cls(name, NewsletterOptions.model_validate(dict(options)))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigurationError(f"systems.{name}: {where}: {err['msg']}") from None

    async def open(self) -> None:
        """Check the file is there (a wrong path is configuration, not a passing outage)."""
        if not self.options.path.is_file():
            raise ConfigurationError(f"{self.name}: path {self.options.path} is not a file")

    async def _read(self) -> dict[str, Any]:
        return json.loads(await asyncio.to_thread(self.options.path.read_text))

    async def _write(self, data: dict[str, Any]) -> None:
        part = self.options.path.with_suffix(".part")
        await asyncio.to_thread(part.write_text, json.dumps(data, indent=2))
        await asyncio.to_thread(part.replace, self.options.path)  # atomic: never half a file

    async def _mine(self, subject: Subject) -> list[dict[str, Any]]:
        email = subject.identities.get("email", "").casefold()
        data = await self._read()
        return [s for s in data["subscribers"] if email and s["email"].casefold() == email]

    async def locate(self, subject: Subject) -> LocateOutcome:
        """Count the subject's entries."""
        found = len(await self._mine(subject))
        return LocateOutcome(found={"subscribers": found} if found else {})

    async def export(self, subject: Subject, sink: ExportSink) -> ExportOutcome:
        """Write the subject's entries, plain JSON values only."""
        rows = await self._mine(subject)
        if not rows:
            return ExportOutcome()
        async with sink.collection("subscribers", FIELDS) as writer:
            for row in rows:
                await writer.write({f: row.get(f) for f in FIELDS})
        return ExportOutcome(exported={"subscribers": len(rows)})

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Plan once (which entries go), then apply what is not done yet; a re-run repeats nothing."""
        if not await plan.has_plan():
            items = [PlanItem(collection="subscribers", key={"email": s["email"]}, action="delete")
                     for s in await self._mine(subject)]
            await plan.save(items)
            await plan.seal()
            progress({"planned": len(items)})
        async for batch in plan.pending(100):
            gone = {item.key["email"] for _, item in batch}
            data = await self._read()
            data["subscribers"] = [s for s in data["subscribers"] if s["email"] not in gone]
            await self._write(data)
            await plan.mark_done([item_id for item_id, _ in batch])
        deleted = [item async for item in plan.items()]
        return ErasureOutcome(deleted={"subscribers": len(deleted)} if deleted else {})

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Look again: any entry still there remains."""
        left = len(await self._mine(subject))
        return VerificationOutcome(remaining={"subscribers": left} if left else {})
