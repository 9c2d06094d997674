"""A partner without an API: a person erases by hand and confirms it to the orchestrator.

Options of a ``[systems.<name>]`` table with ``type = "manual_task"``::

    [systems.print_shop]
    type = "manual_task"
    instructions = "Delete the customer from the print shop's mailing list (Admin > Customers)."
    contact = "printshop@example.com"      # optional: whom the person may ask
    remind_after_days = 3
    timeout_days = 30

- **locate**: ``{"manual": 1}``: the system may hold data; only a person can tell.
- **erase**: nothing is called; the outcome's ``external`` makes the orchestrator wait (in
  ``PartnerWaitWorkflow``) for a person's confirmation, reminding the administrator every
  ``remind_after_days`` and escalating at ``timeout_days``.
- **verify_erasure**: ``{"manual": 1}`` remains until the confirmation
  (``POST /v1/requests/{id}/tasks/{system}/confirmation`` by an administrator of the request's tenant, which
  records who confirmed and when, as the audit event ``confirmed``). With the orchestrator's
  ``task_confirmations`` service attached (``activities.confirmations.TaskConfirmations``), a recorded
  confirmation verifies clean; without it (a bare connector) ``{"manual": 1}`` always remains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.contract import (
    Capability,
    ConfigurationError,
    Connector,
    ErasureOutcome,
    ExternalWait,
    LocateOutcome,
    PlanStore,
    ProgressReporter,
    Subject,
    VerificationOutcome,
)
from connectors.partners.opendsr import first_error

COLLECTION = "manual"
REFERENCE = "manual"
POLL_EVERY_SECONDS = 7 * 86400
"""Polls change nothing for a manual task; rare ones keep the history short."""


class TaskConfirmations(Protocol):
    """The orchestrator's record of confirmations, as the connector uses it (see ``activities.confirmations``)."""

    async def confirmed(self, request_id: str, system: str) -> bool:
        """Whether a person confirmed the task of ``system`` for the request."""
        ...


class ManualTaskConfig(BaseModel):
    """Options of a ``[systems.<name>]`` table with ``type = "manual_task"``."""

    model_config = ConfigDict(extra="forbid")

    instructions: str = Field(min_length=1, max_length=4000, description="What the person must do.")
    contact: str | None = Field(default=None, max_length=400, description="Whom to ask (optional).")
    remind_after_days: int = Field(default=3, ge=1)
    timeout_days: int = Field(default=30, ge=1)

    @field_validator("instructions")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class ManualTaskConnector(Connector):
    """A system a person erases by hand; the orchestrator waits for their confirmation."""

    type_name = "manual_task"
    capabilities = frozenset({Capability.LOCATE, Capability.ERASE})

    def __init__(self, name: str, config: ManualTaskConfig) -> None:
        """Keep the options."""
        super().__init__(name)
        self.config = config
        self._confirmations: TaskConfirmations | None = None

    def attach(self, services: Mapping[str, Any]) -> None:
        """Take the orchestrator's ``task_confirmations`` (optional: without it, verification never completes)."""
        self._confirmations = services.get("task_confirmations", self._confirmations)

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> ManualTaskConnector:
        """Build from the options of ``[systems.<name>]``.

        Raises:
            ConfigurationError: One line saying what is wrong with the options.
        """
        try:
            return cls(name, ManualTaskConfig.model_validate(dict(options)))
        except ValidationError as exc:
            raise ConfigurationError(f"systems.{name}: {first_error(exc)}") from None

    async def locate(self, subject: Subject) -> LocateOutcome:
        """``{"manual": 1}``: only a person can tell what the system holds."""
        return LocateOutcome(found={COLLECTION: 1})

    async def erase(self, subject: Subject, plan: PlanStore, progress: ProgressReporter) -> ErasureOutcome:
        """Nothing to call: wait for a person's confirmation."""
        return ErasureOutcome(external=ExternalWait(
            reference=REFERENCE, poll_every_seconds=POLL_EVERY_SECONDS,
            remind_after_days=self.config.remind_after_days, timeout_days=self.config.timeout_days))

    async def verify_erasure(self, subject: Subject, plan: PlanStore) -> VerificationOutcome:
        """Nothing remains once a person's confirmation is recorded; else (or unattached) ``{"manual": 1}``."""
        if self._confirmations is not None and await self._confirmations.confirmed(subject.request_id, self.name):
            return VerificationOutcome()
        return VerificationOutcome(remaining={COLLECTION: 1})
