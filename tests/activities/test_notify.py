"""The ``dsr.notify`` activity against a real SMTP server (aiosmtpd) and the orchestrator's outbox."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from structlog.testing import capture_logs
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import outbox
from activities.db import create_pool
from activities.notices import render
from activities.notify import MemoryNotifier, NotifyActivities, notifier_from
from workers.config import NotifySettings, Settings, TenantSettings
from workflows.messages import Notification, NotificationKind, Recipient
from workflows.models import RequestKind, SubjectIdentities

SUBJECT = "jane.doe@example.org"
ADMIN = "it-admin@acme.example"
TENANT_OFFICE = "dpo@acme.example"
FALLBACK_OFFICE = "privacy-office@example.com"
REJECT_REASON = "Your account is managed by Acme Corp and its administrator must file the request"


@dataclass
class Collector:
    """aiosmtpd handler: keeps every message; refuses recipients listed in ``refuse`` with the given reply."""

    messages: list[EmailMessage] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content, policy=default_policy))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp() -> Iterator[tuple[Collector, int]]:
    """A local SMTP server on a free port; yields its handler and port."""
    handler = Collector()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
async def pool(orchestrator_db: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(orchestrator_db)
    yield p
    await p.close()


def make_settings(tmp_path: Path, port: int, **notify: Any) -> Settings:
    settings = Settings(
        state_dir=tmp_path / "state",
        tenants={
            "acme": TenantSettings(admin_email=ADMIN, privacy_office_email=TENANT_OFFICE),
            "beta": TenantSettings(),
        },
    )
    # Set after construction: DSR_NOTIFY__* in the environment (the session's SMTP sink) would win otherwise.
    fields = {"smtp_host": "127.0.0.1", "smtp_port": port, "privacy_office_email": FALLBACK_OFFICE, **notify}
    return settings.model_copy(update={"notify": NotifySettings(**fields)})


@pytest.fixture
def acts(smtp: tuple[Collector, int], pool: asyncpg.Pool, tmp_path: Path) -> NotifyActivities:
    settings = make_settings(tmp_path, smtp[1])
    return NotifyActivities(settings, pool, notifier_from(settings))


def note(kind: NotificationKind, recipient: Recipient = Recipient.SUBJECT, *, tenant: str = "acme",
         request_kind: RequestKind | None = RequestKind.ACCESS, facts: dict[str, Any] | None = None,
         email: str | None = SUBJECT, key: str = "") -> Notification:
    identities = None
    if recipient == Recipient.SUBJECT:
        identities = SubjectIdentities(email=email) if email else SubjectIdentities(user_id="u-1")
    return Notification(
        request_id="req_0123456789abcdef", tenant=tenant, kind=kind, recipient=recipient,
        request_kind=request_kind, identities=identities, facts=facts or {},
        dedup_key=f"req_0123456789abcdef:{kind.value}:{recipient.value}:{key}",
    )


def body_of(msg: EmailMessage) -> str:
    return " ".join(msg.get_content().split())  # whitespace-normalised


# kind, recipient, request kind, facts, expected address, phrases the body must contain
CASES: list[tuple[NotificationKind, Recipient, RequestKind | None, dict[str, Any], str, list[str]]] = [
    (NotificationKind.RECEIPT, Recipient.SUBJECT, RequestKind.ERASURE,
     {"due_at": "2026-04-14T23:59:59.999999+00:00"}, SUBJECT,
     ["14 April 2026", "req_0123456789abcdef", "Art. 17", "Art. 12(3)"]),
    (NotificationKind.EXTENSION, Recipient.SUBJECT, RequestKind.ACCESS,
     {"new_due_at": "2026-06-14T23:59:59+00:00", "reason": "Forty systems hold records for you"}, SUBJECT,
     ["14 June 2026", "Forty systems hold records for you", "Art. 12(3)", "supervisory authority"]),
    (NotificationKind.REJECTION, Recipient.SUBJECT, RequestKind.ERASURE, {"reason": REJECT_REASON}, SUBJECT,
     [REJECT_REASON, "supervisory authority", "Art. 12(4)"]),
    (NotificationKind.COMPLETION, Recipient.SUBJECT, RequestKind.EXPORT,
     {"link": "https://dsr.example.com/x/abc123?sig=zz", "link_expires_at": "2026-03-21T10:00:00+00:00",
      "systems": {"appdb": "done", "crm": "not_applicable"}, "bundle_key": "k"}, SUBJECT,
     ["https://dsr.example.com/x/abc123?sig=zz", "21 March 2026 at 10:00 UTC", "2 of our systems"]),
    (NotificationKind.COMPLETION, Recipient.SUBJECT, RequestKind.ERASURE,
     {"retained": [{"ground": "Tax law: order records kept 10 years"}]}, SUBJECT,
     ["erased", "Tax law: order records kept 10 years", "Art. 17(3)"]),
    (NotificationKind.CANCELLATION, Recipient.SUBJECT, RequestKind.ERASURE, {"reason": ""}, SUBJECT,
     ["cancelled", "Nothing was changed"]),
    (NotificationKind.UNVERIFIED, Recipient.SUBJECT, RequestKind.ACCESS, {"days": 14}, SUBJECT,
     ["within 14 days", "Art. 12(6)"]),
    (NotificationKind.RESTRICTION_APPLIED, Recipient.SUBJECT, None, {}, SUBJECT, ["restricted", "Art. 18(1)"]),
    (NotificationKind.RESTRICTION_LIFT_NOTICE, Recipient.SUBJECT, None,
     {"lift_on": "2026-05-02T09:00:00+00:00", "reason": "The records are accurate"}, SUBJECT,
     ["will be lifted on 2 May 2026", "Art. 18(3)", "The records are accurate", "supervisory authority"]),
    (NotificationKind.RESTRICTION_LIFTED, Recipient.SUBJECT, None, {"lifted_at": "2026-05-02T09:00:00+00:00"},
     SUBJECT, ["was lifted on 2 May 2026"]),
    (NotificationKind.ADMIN_REMINDER, Recipient.ADMIN, RequestKind.ERASURE,
     {"due_at": "2026-04-14T23:59:59+00:00", "reminder": 2}, ADMIN,
     ["waiting for your decision", "reminder 2", "14 April 2026", "acme"]),
    (NotificationKind.ADMIN_OBJECTION_WINDOW, Recipient.ADMIN, RequestKind.RESTRICTION,
     {"closes_at": "2026-03-22T08:30:00+00:00", "due_at": "2026-04-14T23:59:59+00:00"}, ADMIN,
     ["unless you object before 22 March 2026 at 08:30 UTC", "7.1"]),
    (NotificationKind.ESCALATION, Recipient.PRIVACY_OFFICE, RequestKind.ERASURE,
     {"due_at": "2026-04-14T23:59:59+00:00", "waiting_for": "approval"}, TENANT_OFFICE,
     ["waiting for approval", "14 April 2026"]),
    (NotificationKind.BACKUPS_PENDING, Recipient.SUBJECT, RequestKind.ERASURE,
     {"gone_by": "2026-05-20T03:00:00+00:00"}, SUBJECT,
     ["20 May 2026", "beyond use", "restored"]),
]


def test_every_kind_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(NotificationKind)


@pytest.mark.parametrize(("kind", "recipient", "request_kind", "facts", "address", "phrases"), CASES,
                         ids=[f"{c[0].value}-{c[2]}" for c in CASES])
async def test_each_kind_renders_and_reaches_the_right_address(
    acts: NotifyActivities, smtp: tuple[Collector, int], pool: asyncpg.Pool, kind: NotificationKind,
    recipient: Recipient, request_kind: RequestKind | None, facts: dict[str, Any], address: str, phrases: list[str],
) -> None:
    n = note(kind, recipient, request_kind=request_kind, facts=facts)
    result = await acts.notify(n)
    assert result.sent and result.outbox_id is not None and result.skipped_reason is None
    [msg] = smtp[0].messages
    assert msg["To"] == address
    assert msg["From"] == "privacy@example.com"
    body = body_of(msg)
    for phrase in phrases:
        assert phrase in body, f"{phrase!r} missing from {kind.value}:\n{msg.get_content()}"
    assert "None" not in body and "{" not in body
    row = await pool.fetchrow("SELECT * FROM dsr_outbox WHERE id = $1", result.outbox_id)
    assert row["status"] == "sent" and row["sent_at"] is not None
    assert row["message_id"] == msg["Message-ID"]
    assert row["kind"] == kind.value and row["recipient_role"] == recipient.value


async def test_same_dedup_key_sends_once(acts: NotifyActivities, smtp: tuple[Collector, int]) -> None:
    n = note(NotificationKind.RECEIPT, facts={"due_at": "2026-04-14T00:00:00+00:00"})
    first = await acts.notify(n)
    second = await acts.notify(n)
    assert first.sent and second.sent and first.outbox_id == second.outbox_id
    assert len(smtp[0].messages) == 1
    # A different key (a second reminder, say) is a different message.
    await acts.notify(note(NotificationKind.RECEIPT, key="again"))
    assert len(smtp[0].messages) == 2


async def test_pending_row_from_a_crash_is_sent_again_with_the_same_message_id(
    acts: NotifyActivities, smtp: tuple[Collector, int], pool: asyncpg.Pool,
) -> None:
    n = note(NotificationKind.RECEIPT)
    # A previous attempt wrote 'pending' and died before recording the outcome.
    await outbox.migrate(pool)
    message_id = outbox.message_id_for(acts._key, n.dedup_key)
    await outbox.claim(pool, dedup_key=n.dedup_key, request_id=n.request_id, tenant=n.tenant, kind=n.kind.value,
                       recipient_role="subject", recipient_hash=None, message_id=message_id, status="pending")
    result = await acts.notify(n)
    assert result.sent
    [msg] = smtp[0].messages
    assert msg["Message-ID"] == message_id
    row = await pool.fetchrow("SELECT status, attempts FROM dsr_outbox WHERE dedup_key = $1", n.dedup_key)
    assert (row["status"], row["attempts"]) == ("sent", 2)


async def test_admin_and_privacy_office_resolution(acts: NotifyActivities, smtp: tuple[Collector, int]) -> None:
    # The tenant's own privacy office wins; a tenant without one falls back to notify.privacy_office_email.
    await acts.notify(note(NotificationKind.ESCALATION, Recipient.PRIVACY_OFFICE, tenant="acme"))
    await acts.notify(note(NotificationKind.ESCALATION, Recipient.PRIVACY_OFFICE, tenant="beta", key="beta"))
    await acts.notify(note(NotificationKind.ADMIN_REMINDER, Recipient.ADMIN, tenant="acme"))
    assert [m["To"] for m in smtp[0].messages] == [TENANT_OFFICE, FALLBACK_OFFICE, ADMIN]


@pytest.mark.parametrize(("n", "reason"), [
    (note(NotificationKind.ADMIN_REMINDER, Recipient.ADMIN, tenant="beta"),
     "no administrator email configured for the tenant"),
    (note(NotificationKind.ADMIN_REMINDER, Recipient.ADMIN, tenant="unknown"),
     "no administrator email configured for the tenant"),
    (note(NotificationKind.RECEIPT, email=None), "no email for the subject"),
])
async def test_skipped_when_no_address(acts: NotifyActivities, smtp: tuple[Collector, int], pool: asyncpg.Pool,
                                       n: Notification, reason: str) -> None:
    result = await acts.notify(n)
    assert (result.sent, result.skipped_reason) == (False, reason)
    assert smtp[0].messages == []
    row = await pool.fetchrow("SELECT status, error_type, recipient_hash FROM dsr_outbox WHERE id = $1",
                              result.outbox_id)
    assert (row["status"], row["error_type"], row["recipient_hash"]) == ("skipped", reason, None)


async def test_privacy_office_skipped_when_unconfigured_anywhere(
    smtp: tuple[Collector, int], pool: asyncpg.Pool, tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, smtp[1], privacy_office_email=None)
    acts = NotifyActivities(settings, pool, notifier_from(settings))
    result = await acts.notify(note(NotificationKind.ESCALATION, Recipient.PRIVACY_OFFICE, tenant="beta"))
    assert (result.sent, result.skipped_reason) == (False, "no privacy office email configured")
    assert smtp[0].messages == []


async def test_disabled_notifications_are_recorded_as_skipped(
    smtp: tuple[Collector, int], pool: asyncpg.Pool, tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, smtp[1], enabled=False)
    acts = NotifyActivities(settings, pool, notifier_from(settings))
    result = await acts.notify(note(NotificationKind.RECEIPT))
    assert (result.sent, result.skipped_reason) == (False, "notifications are disabled")
    assert smtp[0].messages == []


async def test_outbox_and_logs_hold_no_personal_data(acts: NotifyActivities, pool: asyncpg.Pool) -> None:
    n = note(NotificationKind.REJECTION, request_kind=RequestKind.ERASURE, facts={"reason": REJECT_REASON})
    with capture_logs() as logs:
        result = await acts.notify(n)
    assert result.sent
    row = await pool.fetchrow("SELECT * FROM dsr_outbox WHERE id = $1", result.outbox_id)
    subject_line, body = render(n)
    forbidden = [SUBJECT, SUBJECT.split("@")[0], "example.org", REJECT_REASON, "Acme Corp", subject_line,
                 *(line for line in body.splitlines() if len(line) > 12)]
    for column, value in dict(row).items():
        for text in forbidden:
            assert text.lower() not in str(value).lower(), f"{text!r} found in dsr_outbox.{column}"
    assert row["recipient_hash"] == outbox.recipient_hash(acts._key, SUBJECT.upper())  # keyed, case-insensitive
    assert len(row["recipient_hash"]) == 64
    assert logs and all(SUBJECT not in str(e) and REJECT_REASON not in str(e) for e in logs)


async def test_server_down_is_retryable_and_not_recorded_as_sent(pool: asyncpg.Pool, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port())  # nothing listens there
    acts = NotifyActivities(settings, pool, notifier_from(settings))
    n = note(NotificationKind.RECEIPT)
    with pytest.raises(ApplicationError) as raised:
        await acts.notify(n)
    assert not raised.value.non_retryable
    assert raised.value.type == "NotificationDeferred"
    assert SUBJECT not in str(raised.value)
    row = await pool.fetchrow("SELECT status, error_type FROM dsr_outbox WHERE dedup_key = $1", n.dedup_key)
    assert row["status"] == "pending" and row["error_type"]

    # The retry, once the server is back, sends it and records it.
    handler = Collector()
    controller = Controller(handler, hostname="127.0.0.1", port=settings.notify.smtp_port)
    controller.start()
    try:
        result = await acts.notify(n)
    finally:
        controller.stop()
    assert result.sent and len(handler.messages) == 1
    row = await pool.fetchrow("SELECT status, error_type, attempts FROM dsr_outbox WHERE dedup_key = $1",
                              n.dedup_key)
    assert (row["status"], row["error_type"], row["attempts"]) == ("sent", None, 2)


async def test_permanent_refusal_is_not_retryable(
    acts: NotifyActivities, smtp: tuple[Collector, int], pool: asyncpg.Pool,
) -> None:
    smtp[0].refuse[SUBJECT] = "550 5.1.1 No such user here"
    n = note(NotificationKind.RECEIPT)
    with pytest.raises(ApplicationError) as raised:
        await acts.notify(n)
    assert raised.value.non_retryable and raised.value.type == "NotificationRejected"
    assert SUBJECT not in str(raised.value)
    row = await pool.fetchrow("SELECT status, error_type FROM dsr_outbox WHERE dedup_key = $1", n.dedup_key)
    assert (row["status"], row["error_type"]) == ("failed", "RecipientRefused:550")


async def test_temporary_refusal_is_retryable(
    acts: NotifyActivities, smtp: tuple[Collector, int], pool: asyncpg.Pool,
) -> None:
    smtp[0].refuse[SUBJECT] = "451 4.3.0 Try again later"
    n = note(NotificationKind.RECEIPT)
    with pytest.raises(ApplicationError) as raised:
        await acts.notify(n)
    assert not raised.value.non_retryable
    row = await pool.fetchrow("SELECT status, error_type FROM dsr_outbox WHERE dedup_key = $1", n.dedup_key)
    assert (row["status"], row["error_type"]) == ("pending", "RecipientDeferred:451")


async def test_runs_as_an_activity(pool: asyncpg.Pool, tmp_path: Path) -> None:
    memory = MemoryNotifier()
    acts = NotifyActivities(make_settings(tmp_path, 25), pool, memory)
    result = await ActivityEnvironment().run(acts.notify, note(NotificationKind.RECEIPT))
    assert result.sent
    [sent] = memory.sent
    assert sent.to == SUBJECT and sent.message_id.endswith("@dsr>")


def test_missing_facts_give_sensible_sentences_and_unknown_facts_are_ignored() -> None:
    for kind in NotificationKind:
        recipient = {NotificationKind.ADMIN_REMINDER: Recipient.ADMIN, NotificationKind.ESCALATION:
                     Recipient.PRIVACY_OFFICE, NotificationKind.ADMIN_OBJECTION_WINDOW: Recipient.ADMIN,
                     }.get(kind, Recipient.SUBJECT)
        for request_kind in [None, *RequestKind]:
            subject, body = render(note(kind, recipient, request_kind=request_kind, facts={"secret_stuff": "zzz"}))
            assert subject and body.startswith("Hello,") and body.rstrip().endswith("The privacy team")
            assert "None" not in body + subject and "zzz" not in body and "{" not in body
    _, body = render(note(NotificationKind.REJECTION, facts={}))
    assert "will explain the reason" in body and "supervisory authority" in body
    _, body = render(note(NotificationKind.COMPLETION, request_kind=RequestKind.ACCESS, facts={}))
    assert "could not include the download link" in body
    _, body = render(note(NotificationKind.RESTRICTION_LIFT_NOTICE, request_kind=None, facts={}))
    assert "after a notice period" in body and "Art. 18(3)" in body
    _, body = render(note(NotificationKind.RESTRICTION_LIFT_NOTICE, facts={"lift_on": "2026-05-02", "notice_days": 14}))
    assert "will be lifted on 2 May 2026;" in body
