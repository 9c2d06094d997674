"""The connector contract: what every system integration implements and returns.

This module is imported by workflows (inside Temporal's sandbox), so it holds
only pydantic models, enums, protocols and exceptions: no I/O, no drivers.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field


class Capability(StrEnum):
    """What a connector can do for a request."""

    LOCATE = "locate"
    EXPORT = "export"
    ERASE = "erase"
    RECTIFY = "rectify"
    RESTRICT = "restrict"
    """Restrict processing and lift the restriction again (GDPR Art. 18); both methods come together."""
    STOP_PROCESSING = "stop_processing"
    """Stop processing for a named purpose: objection, marketing opt-out, consent withdrawal (Art. 7(3), 21)."""
    DEACTIVATE = "deactivate"
    """Make the account stop working without deleting anything."""


class Subject(BaseModel):
    """The data subject as a connector sees it.

    Only the identities the request carries; the connector maps them onto its
    own identity fields (for Fides datasets, ``fides_meta.identity``).
    """

    request_id: str = Field(description="Opaque id of the request this work belongs to.")
    identities: dict[str, str] = Field(
        description="Identity type to value, for example {'email': 'jane@example.com'}."
    )


class RetainedItem(BaseModel):
    """Data kept on purpose, with the legal ground recorded (GDPR Art. 17(3))."""

    collection: str
    count: int
    ground: str = Field(description="Why it is kept, e.g. 'Tax law: invoices kept 10 years'.")
    fields: list[str] = Field(default_factory=list, description="Fields kept; empty means the whole row.")


class LocateOutcome(BaseModel):
    """What a system holds for the subject: row (or record) counts per collection."""

    found: dict[str, int] = Field(default_factory=dict)


class ExportedFile(BaseModel):
    """One file written to the export store."""

    name: str
    rows: int
    bytes: int
    sha256: str


class ExportOutcome(BaseModel):
    """What an export wrote; the rows themselves stay in the export store (claim check)."""

    exported: dict[str, int] = Field(default_factory=dict)
    files: list[ExportedFile] = Field(default_factory=list)
    part: str = Field(default="", description="Export-store key prefix that holds this system's files.")


class ExternalWait(BaseModel):
    """A system that completes later, on its own (a partner): how the orchestrator waits for it."""

    reference: str = Field(description="The partner's reference for our request (e.g. OpenDSR subject_request_id).")
    poll_every_seconds: int = Field(default=6 * 3600, ge=60, description="Status polling when no callback comes.")
    remind_after_days: int = Field(default=7, ge=1, description="Remind the administrator while it is pending.")
    timeout_days: int = Field(default=30, ge=1, description="Then the system needs attention (escalated).")


class ErasureOutcome(BaseModel):
    """What an erasure changed, and what it kept on purpose."""

    masked: dict[str, int] = Field(default_factory=dict, description="Rows whose fields were masked.")
    completes_at: datetime | None = Field(
        default=None,
        description="When the erasure will be complete if it cannot be now (e.g. the newest affected backup "
                    "expires then); the orchestrator waits durably and calls verify_erasure after it.",
    )
    deleted: dict[str, int] = Field(default_factory=dict, description="Rows deleted.")
    retained: list[RetainedItem] = Field(default_factory=list)
    batches: int = 0
    external: ExternalWait | None = Field(
        default=None, description="Set by partners that complete later: the orchestrator waits for their callback "
                                  "(or polls verify_erasure) in a child workflow.",
    )


class VerificationOutcome(BaseModel):
    """The second look after an erasure."""

    remaining: dict[str, int] = Field(
        default_factory=dict, description="Rows still holding erasable data, per collection."
    )
    retained: list[RetainedItem] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing erasable remains."""
        return not any(self.remaining.values())


class ActionOutcome(BaseModel):
    """What a rectification, restriction, lifting, stop of processing or deactivation changed."""

    changed: dict[str, int] = Field(default_factory=dict, description="Records changed, per collection.")
    fields: list[str] = Field(default_factory=list, description="Fields (collection.field) the action wrote.")
    ignored: list[str] = Field(
        default_factory=list, description="Parts of the request this system does not hold (e.g. a correction)."
    )


class KeyRange(BaseModel):
    """The rows a plan item stands for when it stands for many: the subject's rows with a key in [low, high).

    A connector plans ranges where every one of the subject's rows of a collection gets
    the same change; the bounds and the selection are fixed when the plan is made, so
    applying and verifying the item never depend on a fresh look-up of the subject.
    """

    field: str = Field(description="The key column the range is on (a single-column primary key).")
    low: Any = Field(default=None, description="Inclusive lower bound; None: unbounded.")
    high: Any = Field(default=None, description="Exclusive upper bound; None: unbounded.")
    rows: int | None = Field(
        default=None, ge=0, description="The subject's rows in the range when it was planned; None where the bounds "
                                        "came from the table's key alone and the rows are counted as they change "
                                        "(``applied``).",
    )
    applied: int | None = Field(
        default=None, ge=0, description="Where ``rows`` is None: the rows the transaction applying the item "
                                        "changed, recorded with ``txn`` before it commits. Consecutive ranges "
                                        "applied by one statement share its count: the first holds it, the others 0.",
    )
    txn: str | None = Field(
        default=None, description="With ``applied``: the system's id of the transaction applying the item, so a "
                                  "run that crashed after the commit and before ``mark_done`` asks the system "
                                  "whether it committed instead of applying the item again and counting nothing.",
    )
    selection: dict[str, Any] = Field(
        default_factory=dict, description="How the connector tells the subject's rows from others' inside the "
                                          "range (connector-specific JSON, e.g. the values of referencing fields).",
    )


class PlanItem(BaseModel):
    """One row's erasure (or, with ``key_range``, many rows'), decided once and stored so that a crashed run resumes.

    ``assignments`` hold the final values (already masked), so applying an item
    twice gives the same row: erasure is idempotent by construction. An item with
    ``key_range`` stands for every row of the subject inside the range; its
    assignments are constants that replace non-NULL values (NULL stays NULL, as a
    masker leaves it), so it too can be applied twice. Items stored before
    ``key_range`` existed load as row items.
    """

    collection: str
    key: dict[str, Any] = Field(default_factory=dict, description="Primary key of the row (empty for a range).")
    action: Literal["update", "delete", "retain"]
    assignments: dict[str, Any] = Field(default_factory=dict)
    ground: str | None = None
    retained_fields: list[str] = Field(default_factory=list)
    key_range: KeyRange | None = Field(default=None, description="Set when the item stands for a range of rows.")

    @property
    def rows(self) -> int:
        """How many rows the item stands for: 1 for a row item; for a range, those planned, or where they were
        not counted when planning, those it changed once applied (0 before)."""
        if self.key_range is None:
            return 1
        if self.key_range.rows is not None:
            return self.key_range.rows
        return self.key_range.applied or 0


class ConnectorError(Exception):
    """A connector failed. ``retryable`` says whether trying again can help."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigurationError(ConnectorError):
    """The connector's configuration is wrong; retrying cannot help."""

    retryable = False


class UnsupportedError(ConnectorError):
    """The connector lacks the capability asked of it."""

    retryable = False


class CollectionWriter(Protocol):
    """Receives the rows of one collection during an export."""

    async def write(self, row: Mapping[str, Any]) -> None:
        """Append one row."""


class ExportSink(Protocol):
    """Where a connector streams what it exports; the sink owns the file formats."""

    def collection(self, name: str, fields: Sequence[str]) -> AbstractAsyncContextManager[CollectionWriter]:
        """Open a writer for one collection with the given column order."""


class PlanStore(Protocol):
    """Durable storage of an erasure plan, owned by the orchestrator."""

    async def has_plan(self) -> bool:
        """Whether a plan was already saved for this request and system."""

    async def save(self, items: Sequence[PlanItem]) -> None:
        """Append items to the plan (called in chunks, then ``seal``)."""

    async def seal(self) -> None:
        """Mark the plan complete: from now on it is replayed, never rebuilt."""

    def pending(self, batch_size: int) -> AsyncIterator[list[tuple[int, PlanItem]]]:
        """Yield batches of (item id, item) not yet applied."""

    async def mark_done(self, item_ids: Sequence[int]) -> None:
        """Record that these items were applied."""

    async def record(self, items: Mapping[int, PlanItem]) -> None:
        """Store these items (by id) again as they are now, e.g. with what applying them changed.

        Their place in the plan and whether they are done stay as they were.
        """

    def items(self) -> AsyncIterator[PlanItem]:
        """Every item of the plan, applied or not."""


class Connector(abc.ABC):
    """One system that may hold a subject's data.

    Subclasses declare ``capabilities`` and implement the matching methods.
    Every method is safe to call again after a failure.
    """

    type_name: str = ""
    capabilities: frozenset[Capability] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> Connector:
        """Build the connector from its TOML options; raise ConfigurationError with one clear line."""
        raise ConfigurationError(f"{cls.__name__} does not implement from_options")

    def attach(self, services: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Receive orchestrator services before ``open`` (e.g. ``{"erasure_ledger": ...}``); ignore unknown ones."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire connections; called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def locate(self, subject: Subject) -> LocateOutcome:
        """Count what the system holds for the subject."""

    async def export(self, subject: Subject, sink: ExportSink) -> ExportOutcome:
        """Stream the subject's data into ``sink``."""
        raise UnsupportedError(f"{self.type_name} cannot export")

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Erase the subject's data, following and recording ``plan``."""
        raise UnsupportedError(f"{self.type_name} cannot erase")

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Look again after an erasure and report what remains."""
        raise UnsupportedError(f"{self.type_name} cannot verify erasure")

    async def rectify(self, subject: Subject, corrections: Mapping[str, str]) -> ActionOutcome:
        """Apply corrections keyed by data category (e.g. ``user.name``) to the declared fields only (Art. 16)."""
        raise UnsupportedError(f"{self.type_name} cannot rectify")

    async def restrict(self, subject: Subject, reference: str) -> ActionOutcome:
        """Flag the subject's data as restricted (Art. 18, Recital 67); ``reference`` names the cause."""
        raise UnsupportedError(f"{self.type_name} cannot restrict processing")

    async def lift_restriction(self, subject: Subject, reference: str) -> ActionOutcome:
        """Remove the restriction that ``reference`` placed; other restrictions stay."""
        raise UnsupportedError(f"{self.type_name} cannot lift a restriction")

    async def stop_processing(self, subject: Subject, purpose: str) -> ActionOutcome:
        """Stop processing the subject's data for ``purpose`` (e.g. ``marketing``)."""
        raise UnsupportedError(f"{self.type_name} cannot stop processing")

    async def deactivate(self, subject: Subject) -> ActionOutcome:
        """Make the subject's account stop working; nothing is deleted (policy 6.1.2)."""
        raise UnsupportedError(f"{self.type_name} cannot deactivate")


class ProgressReporter(Protocol):
    """Receives progress during long operations (the activity turns it into heartbeats)."""

    def __call__(self, detail: Mapping[str, Any]) -> None:
        """Report progress."""
