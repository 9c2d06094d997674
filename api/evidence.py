"""``GET /v1/requests/{id}/evidence``: the evidence report a privacy officer hands to a regulator.

JSON at ``/evidence``, one self-contained HTML page at ``/evidence.html``. Built from the request's status (or the
non-personal summary kept after crypto-shredding) and its audit records, with the head of the tenant's hash
chain at the time of the report, so that the report can later be checked against the trail. No personal
data: what was asked (the kind), when, the deadline and any extension, the gates as facts, each system's
outcome with counts, what was retained and on which legal ground, when backup copies will be gone.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from api.audit_routes import DATABASE
from api.auth import require_role
from api.common import CLIENT, current_status, find_for_tenant
from api.requests_routes import REQUESTS
from workflows.models import RequestStatus

READERS = ("admin", "privacy_officer", "auditor")


class SystemEvidence(BaseModel):
    """One system's part."""

    system: str
    type: str
    outcome: str
    found: dict[str, int] = Field(default_factory=dict)
    exported: dict[str, int] = Field(default_factory=dict)
    erased: dict[str, int] = Field(default_factory=dict, description="Masked and deleted records per collection.")
    changed: dict[str, int] = Field(default_factory=dict)
    retained: list[dict[str, Any]] = Field(default_factory=list, description="Collection, count, legal ground.")
    gone_by: datetime | None = Field(default=None, description="When the last copy (backups) will be gone.")
    attempts: int = 1


class EvidenceRecord(BaseModel):
    """One audit record, as chained."""

    seq: int | None
    at: datetime
    event: str
    system: str | None
    outcome: str
    actor: str | None
    hash: str | None


class EvidenceReport(BaseModel):
    """What was asked, what was done, what was kept and why."""

    request_id: str
    tenant: str
    kind: str
    outcome: str
    received_at: datetime
    due_at: datetime
    extended: bool
    original_due_at: datetime | None = None
    completed_at: datetime | None = None
    overdue: bool
    decision: str | None = Field(default=None, description="approve or reject, by whom, when.")
    shredded_at: datetime | None = None
    systems: list[SystemEvidence]
    backups_gone_by: datetime | None = None
    records: list[EvidenceRecord]
    chain_head: str | None = Field(default=None, description="The tenant's newest audit hash when the report ran.")
    generated_at: datetime


def build_report(status: RequestStatus, records: list[dict[str, Any]], chain_head: str | None) -> EvidenceReport:
    """The report from the status and the request's audit records (oldest first)."""
    systems = []
    for st in status.systems.values():
        erased: dict[str, int] = {}
        for part in (st.masked, st.deleted):
            for collection, n in part.items():
                erased[collection] = erased.get(collection, 0) + n
        systems.append(SystemEvidence(
            system=st.system, type=st.type, outcome=st.state.value, found=st.found, exported=st.exported,
            erased=erased, changed=st.changed, attempts=st.attempts,
            retained=[{"collection": r.collection, "count": r.count, "ground": r.ground, "fields": r.fields}
                      for r in st.retained],
            gone_by=getattr(st, "completes_at", None),
        ))
    gone = [s.gone_by for s in systems if s.gone_by is not None]
    decision = None
    if status.decision is not None:
        decision = f"{status.decision.outcome} by {status.decision.actor} at {status.decision.decided_at.isoformat()}"
    return EvidenceReport(
        request_id=status.id, tenant=status.tenant, kind=status.kind.value, outcome=status.step.value,
        received_at=status.received_at, due_at=status.due_at, extended=status.extension is not None,
        original_due_at=status.extension.original_due_at if status.extension else None,
        completed_at=status.completed_at, overdue=status.overdue, decision=decision,
        shredded_at=status.shredded_at, systems=systems, backups_gone_by=max(gone) if gone else None,
        records=[EvidenceRecord(seq=r.get("seq"), at=r["at"], event=r["event"], system=r.get("system"),
                                outcome=r["outcome"], actor=r.get("actor"), hash=r.get("hash")) for r in records],
        chain_head=chain_head, generated_at=datetime.now(UTC),
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return html.escape(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    if isinstance(value, dict):
        return html.escape(", ".join(f"{k}: {v}" for k, v in sorted(value.items())) or "-")
    return html.escape(str(value))


def render_html(report: EvidenceReport) -> str:
    """The report as one self-contained HTML page (every value escaped)."""
    facts = [
        ("Request", report.request_id), ("Tenant", report.tenant), ("Right exercised", report.kind),
        ("Outcome", report.outcome), ("Received", report.received_at), ("Due", report.due_at),
        ("Deadline extended", f"yes, from {_cell(report.original_due_at)}" if report.extended else "no"),
        ("Completed", report.completed_at), ("Overdue", "yes" if report.overdue else "no"),
        ("Decision", report.decision), ("Backups gone by", report.backups_gone_by),
        ("Crypto-shredded", report.shredded_at), ("Audit chain head", report.chain_head),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v if k == 'Deadline extended' else _cell(v)}</td></tr>"
                   for k, v in facts)
    def retained(s: SystemEvidence) -> str:
        items = [_cell("{collection} ({count}): {ground}".format(**r)) for r in s.retained]
        return "<br>".join(items) or "-"

    systems = "".join(
        f"<tr><td>{_cell(s.system)}</td><td>{_cell(s.type)}</td><td>{_cell(s.outcome)}</td><td>{_cell(s.found)}</td>"
        f"<td>{_cell(s.exported)}</td><td>{_cell(s.erased)}</td><td>{_cell(s.changed)}</td>"
        f"<td>{retained(s)}</td><td>{_cell(s.gone_by)}</td></tr>"
        for s in report.systems
    )
    records = "".join(
        f"<tr><td>{_cell(r.seq)}</td><td>{_cell(r.at)}</td><td>{_cell(r.event)}</td><td>{_cell(r.system)}</td>"
        f"<td>{_cell(r.outcome)}</td><td>{_cell(r.actor)}</td><td><code>{_cell((r.hash or '')[:16])}</code></td></tr>"
        for r in report.records
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evidence report {html.escape(report.request_id)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}}table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}</style>
</head><body>
<h1>Evidence report</h1>
<p>Generated {_cell(report.generated_at)}. It holds no personal data: references, counts, outcomes and
legal grounds only. Each audit record is hash-chained to the one before it; <code>dsr audit verify</code>
checks the trail.</p>
<table>{rows}</table>
<h2>Systems</h2>
<table><tr><th>System</th><th>Type</th><th>Outcome</th><th>Found</th><th>Exported</th><th>Erased</th><th>Changed</th>
<th>Retained (legal ground)</th><th>Gone by</th></tr>{systems}</table>
<h2>Audit trail</h2>
<table><tr><th>Seq</th><th>Time</th><th>Step</th><th>System</th><th>Outcome</th><th>Actor</th><th>Hash</th></tr>
{records}</table>
</body></html>
"""


async def _report(request: web.Request) -> EvidenceReport:
    principal = require_role(request, *READERS)
    client = request.app[CLIENT]
    request_id = request.match_info["id"]
    found, status = await find_for_tenant(client, REQUESTS, request_id, principal.tenant)
    if status is None:
        status = await current_status(client, REQUESTS, found)
    pool = await request.app[DATABASE].pool()
    try:
        rows = await pool.fetch(
            """SELECT seq, at, event, system, outcome, actor, hash FROM dsr_audit WHERE request_id = $1
               ORDER BY seq NULLS LAST, id""", request_id)
        head = await pool.fetchval(
            "SELECT hash FROM dsr_audit WHERE tenant = $1 AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
            status.tenant)
    except asyncpg.UndefinedTableError:  # no worker has written to this database yet
        rows, head = [], None
    return build_report(status, [dict(r) for r in rows], head)


async def get_evidence(request: web.Request) -> web.Response:
    """``GET /v1/requests/{id}/evidence``: the evidence report as JSON."""
    report = await _report(request)
    return web.json_response(report.model_dump(mode="json"))


async def get_evidence_html(request: web.Request) -> web.Response:
    """``GET /v1/requests/{id}/evidence.html``: the evidence report as one HTML page."""
    report = await _report(request)
    return web.Response(text=render_html(report), content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})
