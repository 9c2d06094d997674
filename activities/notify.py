"""Notifications: messages to the subject, the tenant's administrator and the privacy office.

The ``dsr.notify`` activity resolves the recipient's address, renders a plain-text
message for the notification's kind (``activities.notices``), records it in the
outbox (``activities.outbox``: no address, subject line or body) and hands it to a
``Notifier``; ``SmtpNotifier`` sends it with aiosmtplib.

Delivery is at least once: the outbox row is written as ``pending`` before the
message goes to the mail server and marked ``sent`` after, so a retry after a
``sent`` row sends nothing, and a retry after a crash in between sends again
(with the same Message-ID, which lets mail systems drop the duplicate).

Errors: a notifier raises ``NotificationDeferred`` for what may pass (server down,
4xx replies) and ``NotificationRefused`` for a permanent refusal (5xx to the
recipient or the message). The activity turns the first into a retryable failure
and the second into a non-retryable ``ApplicationError(type="NotificationRejected")``.
Neither the failure messages nor the logs carry an address or any message text.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol

import aiosmtplib
import asyncpg
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import outbox
from activities.notices import render
from workers.config import NotifySettings, Settings
from workflows.messages import Notification, NotificationResult, Recipient

log = structlog.get_logger("dsr.notify")


# --- the notifier interface ------------------------------------------------------------------------


class NotificationDeferred(Exception):
    """The message could not be delivered now; trying again later may work (server down, 4xx reply).

    Args:
        error_type: A short code without personal data, recorded in the outbox (e.g. ``SMTPConnectError``).
    """

    def __init__(self, error_type: str) -> None:
        super().__init__(error_type)
        self.error_type = error_type


class NotificationRefused(Exception):
    """The server refused the recipient or the message for good (5xx reply).

    Args:
        error_type: A short code without personal data, recorded in the outbox (e.g. ``RecipientRefused:550``).
    """

    def __init__(self, error_type: str) -> None:
        super().__init__(error_type)
        self.error_type = error_type


class Notifier(Protocol):
    """Delivers one plain-text message. Raises ``NotificationDeferred`` or ``NotificationRefused``."""

    async def send(self, to: str, subject: str, body: str, message_id: str) -> None:
        """Send ``body`` to ``to`` with the given subject line and Message-ID header."""
        ...


class SmtpNotifier:
    """Sends through an SMTP server with aiosmtplib, one connection per message.

    Args:
        settings: Server, TLS and sender; the credentials come from the environment variables it names.
    """

    def __init__(self, settings: NotifySettings) -> None:
        self._settings = settings

    async def send(self, to: str, subject: str, body: str, message_id: str) -> None:
        """Send one message; SMTP errors become ``NotificationDeferred`` or ``NotificationRefused``."""
        s = self._settings
        msg = EmailMessage()
        msg["From"] = s.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = message_id
        msg["Date"] = formatdate(usegmt=True)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        msg.set_content(body)
        try:
            await aiosmtplib.send(
                msg,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=os.environ.get(s.username_env) or None,
                password=os.environ.get(s.password_env) or None,
                use_tls=s.use_tls,
                start_tls=s.start_tls,
                timeout=s.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            codes = [r.code for r in err.recipients] or [0]
            code = max(codes)
            if all(500 <= c < 600 for c in codes):
                raise NotificationRefused(f"RecipientRefused:{code}") from None
            raise NotificationDeferred(f"RecipientDeferred:{code}") from None
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as err:
            what = "Recipient" if isinstance(err, aiosmtplib.SMTPRecipientRefused) else "Message"
            if 500 <= err.code < 600:
                raise NotificationRefused(f"{what}Refused:{err.code}") from None
            raise NotificationDeferred(f"{what}Deferred:{err.code}") from None
        except aiosmtplib.SMTPResponseException as err:
            # Sender refused, authentication failed, HELO refused: a configuration an operator can fix.
            raise NotificationDeferred(f"{type(err).__name__}:{err.code}") from None
        except (aiosmtplib.SMTPException, OSError) as err:
            raise NotificationDeferred(type(err).__name__) from None


@dataclass
class SentMessage:
    """A message a ``MemoryNotifier`` kept."""

    to: str
    subject: str
    body: str
    message_id: str


@dataclass
class MemoryNotifier:
    """Keeps messages in memory instead of sending them (tests of workflows, demos)."""

    sent: list[SentMessage] = field(default_factory=list)

    async def send(self, to: str, subject: str, body: str, message_id: str) -> None:
        """Keep the message."""
        self.sent.append(SentMessage(to, subject, body, message_id))


def notifier_from(settings: Settings) -> Notifier:
    """The configured notifier (SMTP)."""
    return SmtpNotifier(settings.notify)


# --- the activity ----------------------------------------------------------------------------------


class NotifyActivities:
    """Holds the notifier, the orchestrator's pool (for the outbox) and the settings (for addresses).

    Args:
        settings: Tenants' administrator and privacy-office addresses, and ``notify``.
        pool: The orchestrator database; the outbox table is created on first use.
        notifier: What delivers the messages (``notifier_from(settings)`` in the worker).
    """

    def __init__(self, settings: Settings, pool: asyncpg.Pool, notifier: Notifier) -> None:
        self._settings = settings
        self._pool = pool
        self._notifier = notifier
        self._key = outbox.outbox_key(settings)
        self._migrated = False

    async def _ensure_schema(self) -> None:
        if not self._migrated:
            await outbox.migrate(self._pool)
            self._migrated = True

    def _address(self, n: Notification) -> tuple[str | None, str]:
        """The recipient's address, or None and the reason (a fixed text, no personal data)."""
        if not self._settings.notify.enabled:
            return None, "notifications are disabled"
        tenant = self._settings.tenant(n.tenant)
        match n.recipient:
            case Recipient.SUBJECT:
                email = n.identities.email if n.identities else None
                return (str(email), "") if email else (None, "no email for the subject")
            case Recipient.ADMIN:
                admin = tenant.admin_email if tenant else None
                return (admin, "") if admin else (None, "no administrator email configured for the tenant")
            case Recipient.PRIVACY_OFFICE:
                office = (tenant.privacy_office_email if tenant else None) or self._settings.notify.privacy_office_email
                return (office, "") if office else (None, "no privacy office email configured")
        return None, "unknown recipient"

    @activity.defn(name="dsr.notify")
    async def notify(self, n: Notification) -> NotificationResult:
        """Send one notification once (per ``dedup_key``), recording it in the outbox without personal data.

        Raises:
            ApplicationError: ``NotificationRejected`` (non-retryable) when the server refuses the message for
                good; ``NotificationDeferred`` (retryable) when it may work later.
        """
        await self._ensure_schema()
        fields = {"request_id": n.request_id, "kind": n.kind.value, "recipient": n.recipient.value}
        address, reason = self._address(n)
        common: dict[str, Any] = {
            "dedup_key": n.dedup_key, "request_id": n.request_id, "tenant": n.tenant, "kind": n.kind.value,
            "recipient_role": n.recipient.value, "message_id": outbox.message_id_for(self._key, n.dedup_key),
        }
        if address is None:
            row = await outbox.claim(self._pool, **common, recipient_hash=None, status="skipped",
                                     error_type=reason)
            if row.status == "sent":
                return NotificationResult(sent=True, outbox_id=row.id)
            log.info("notification_skipped", **fields, reason=reason)
            return NotificationResult(sent=False, outbox_id=row.id, skipped_reason=reason)

        row = await outbox.claim(self._pool, **common, recipient_hash=outbox.recipient_hash(self._key, address),
                                 status="pending")
        if row.status == "sent":
            log.info("notification_already_sent", **fields, outbox_id=row.id)
            return NotificationResult(sent=True, outbox_id=row.id)

        subject, body = render(n)
        try:
            await self._notifier.send(address, subject, body, common["message_id"])
        except NotificationRefused as err:
            await outbox.mark(self._pool, row.id, "failed", err.error_type)
            log.warning("notification_refused", **fields, outbox_id=row.id, error_type=err.error_type)
            raise ApplicationError(
                f"the mail server refused the {n.kind.value} notification ({err.error_type})",
                type="NotificationRejected", non_retryable=True,
            ) from None
        except Exception as err:
            error_type = err.error_type if isinstance(err, NotificationDeferred) else type(err).__name__
            await outbox.mark(self._pool, row.id, "pending", error_type)
            log.warning("notification_deferred", **fields, outbox_id=row.id, error_type=error_type)
            raise ApplicationError(
                f"the {n.kind.value} notification could not be delivered yet ({error_type})",
                type="NotificationDeferred",
            ) from None
        await outbox.mark(self._pool, row.id, "sent")
        log.info("notification_sent", **fields, outbox_id=row.id)
        return NotificationResult(sent=True, outbox_id=row.id)

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for worker registration."""
        return [self.notify]
