"""Inputs of the activities the workflows schedule (encrypted in history like every payload)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from connectors.contract import ExternalWait


class RetrySettings(BaseModel):
    """A system's own retry policy for its activities (``[systems.<name>.retry]``)."""

    maximum_attempts: int = Field(default=8, ge=1, le=100)
    initial_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    maximum_interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=10.0)


class SystemInfo(BaseModel):
    """A configured system as the planner reports it."""

    name: str
    type: str
    capabilities: list[str]
    retry: RetrySettings | None = Field(default=None, description="None: the orchestrator's defaults.")


class SystemTask(BaseModel):
    """Input of a per-system activity."""

    request_id: str
    system: str
    identities: dict[str, str]


class ActionTask(SystemTask):
    """Input of the per-system action activities (rectify, restrict, lift, stop processing, deactivate)."""

    corrections: dict[str, str] = Field(default_factory=dict)
    purpose: str | None = None
    reference: str = Field(default="", description="What a restriction belongs to (request or dispute id).")


class AuditEvent(BaseModel):
    """One step's evidence. Never personal data: references, counts and outcomes only."""

    request_id: str
    tenant: str
    event: str
    system: str | None = None
    outcome: str = "ok"
    actor: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    at: datetime
    dedup_key: str | None = Field(
        default=None,
        description="What makes a retry write the record once; None: request, event, system and time. "
                    "Not part of the record's hashed content.",
    )


class DeliverInput(BaseModel):
    """Input of the deliver activity: the parts written by each system's export."""

    request_id: str
    parts: list[str]


class BackupExpiryInput(BaseModel):
    """Input of ``BackupExpiryWorkflow``: wait for a system's backups to expire, then verify they are gone."""

    request_id: str
    tenant: str
    system: str
    identities: dict[str, str]
    completes_at: datetime = Field(description="When the newest affected backup expires (ErasureOutcome).")
    retry_every_days: int = Field(default=1, ge=1, le=30, description="Between checks while backups remain.")
    max_retries: int = Field(default=30, ge=0, le=365, description="Checks after the first before giving up.")


class PartnerWaitInput(BaseModel):
    """Input of ``PartnerWaitWorkflow``: wait for a partner that completes an erasure on its own."""

    request_id: str
    tenant: str
    system: str
    identities: dict[str, str]
    external: ExternalWait = Field(description="The partner's reference and how to wait (ErasureOutcome.external).")


class PartnerStatus(BaseModel):
    """Signal ``partner_status`` of ``PartnerWaitWorkflow``: what the partner (or a person) reported."""

    status: Literal["pending", "in_progress", "completed", "cancelled"]
    received_at: datetime
    reference: str | None = Field(
        default=None, description="The partner's reference (OpenDSR subject_request_id); another one is ignored.")
    actor: str | None = Field(default=None, description="Who confirmed a manual task (token name), else None.")


def partner_workflow_id(request_id: str, system: str) -> str:
    """The partner wait's workflow id: the request's (opaque) id and the system's name, never personal data."""
    return f"{request_id}/partner/{system}"
