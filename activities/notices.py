"""Notification texts: the subject line and plain-text body of each kind of notification.

``render`` turns a ``Notification`` into a subject line and a body: one template per
``NotificationKind``, filled from the request's reference, tenant and kind and from
``Notification.facts``. A fact a template does not use is ignored; a missing one gives a
sentence that does without it. The ``dsr.notify`` activity (``activities.notify``)
sends what ``render`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from workflows.messages import Notification, NotificationKind
from workflows.models import RequestKind

SIGNATURE = "Kind regards,\nThe privacy team"
COMPLAINT = (
    "If you disagree, you may reply to this message, and you have the right to lodge a complaint with a "
    "supervisory authority, in particular in the country where you live or work, and to seek a judicial remedy "
    "(GDPR Art. 12(4), 77 and 79)."
)

WHAT_YOU_ASKED: dict[RequestKind, str] = {
    RequestKind.ACCESS: "access to the personal data we hold about you (GDPR Art. 15)",
    RequestKind.EXPORT: "a copy of your personal data in a portable format (GDPR Art. 20)",
    RequestKind.ERASURE: "the erasure of your personal data (GDPR Art. 17)",
    RequestKind.RECTIFICATION: "the correction of your personal data (GDPR Art. 16)",
    RequestKind.RESTRICTION: "the restriction of processing of your personal data (GDPR Art. 18)",
    RequestKind.OBJECTION: "your objection to the processing of your personal data (GDPR Art. 21)",
    RequestKind.OPT_OUT: "to stop receiving direct marketing (GDPR Art. 21(2) and (3))",
    RequestKind.CONSENT_WITHDRAWAL: "the withdrawal of your consent (GDPR Art. 7(3))",
    RequestKind.DEACTIVATION: "the deactivation of your account",
}

KIND_TITLE: dict[RequestKind, str] = {
    RequestKind.ACCESS: "access request",
    RequestKind.EXPORT: "data portability request",
    RequestKind.ERASURE: "erasure request",
    RequestKind.RECTIFICATION: "rectification request",
    RequestKind.RESTRICTION: "restriction request",
    RequestKind.OBJECTION: "objection",
    RequestKind.OPT_OUT: "marketing opt-out",
    RequestKind.CONSENT_WITHDRAWAL: "consent withdrawal",
    RequestKind.DEACTIVATION: "deactivation request",
}


class _Facts:
    """Read access to ``Notification.facts`` that tolerates absent, empty and mistyped values."""

    def __init__(self, facts: Mapping[str, Any]) -> None:
        self._facts = facts

    def text(self, *keys: str) -> str | None:
        for key in keys:
            value = self._facts.get(key)
            if value is not None and not isinstance(value, dict | list) and str(value).strip():
                return str(value).strip()
        return None

    def date(self, *keys: str, with_time: bool = False) -> str | None:
        for key in keys:
            value = self._facts.get(key)
            moment: datetime | None = None
            if isinstance(value, datetime):
                moment = value
            elif isinstance(value, date):
                moment = datetime(value.year, value.month, value.day)
            elif isinstance(value, str) and value.strip():
                try:
                    moment = datetime.fromisoformat(value.strip())
                except ValueError:
                    return value.strip()
            if moment is not None:
                return _human_date(moment, with_time=with_time)
        return None

    def raw(self, key: str) -> Any:
        return self._facts.get(key)


def _sentence(text: str) -> str:
    return text if text[-1] in ".!?" else text + "."


def _human_date(moment: datetime, *, with_time: bool) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    out = f"{moment.day} {moment:%B %Y}"
    if with_time:
        out += f" at {moment:%H:%M}" + (" UTC" if moment.tzinfo is not None else "")
    return out


@dataclass(frozen=True)
class _Context:
    ref: str
    tenant: str
    request_kind: RequestKind | None
    facts: _Facts

    @property
    def title(self) -> str:
        return KIND_TITLE.get(self.request_kind, "request") if self.request_kind else "request"

    @property
    def a_title(self) -> str:
        return ("an " if self.title[0] in "aeiou" else "a ") + self.title

    @property
    def asked(self) -> str:
        return WHAT_YOU_ASKED.get(self.request_kind, "") if self.request_kind else ""


Rendered = tuple[str, list[str]]


def _receipt(c: _Context) -> Rendered:
    asked = f" for {c.asked}" if c.asked else ""
    due = c.facts.date("due_at")
    when = (f"We will answer by {due}, one month after we received it." if due
            else "We will answer within one month of receiving it.")
    return f"We received your {c.title}", [
        f"We have received your request{asked}. Its reference is {c.ref}; please quote it if you write to us.",
        f"{when} If the request is complex or we receive many, this period may be extended by up to two further "
        "months; we would tell you within the first month, with the reason (GDPR Art. 12(3)).",
        "You do not need to do anything now. We will write to you again when your request is complete.",
    ]


def _extension(c: _Context) -> Rendered:
    due = c.facts.date("new_due_at", "due_at")
    reason = c.facts.text("reason")
    paras = [
        f"We need more time to complete your {c.title} (reference {c.ref}). "
        + (f"We will now answer by {due}." if due else "We will tell you the new date as soon as we can."),
        f"The reason: {_sentence(reason)}" if reason else "We will explain the reason on request.",
        "The law allows this extension of up to two further months where a request is complex or we receive many "
        "(GDPR Art. 12(3)). " + COMPLAINT,
    ]
    return f"Your {c.title} will take longer", paras


def _rejection(c: _Context) -> Rendered:
    reason = c.facts.text("reason")
    return f"We cannot act on your {c.title}", [
        f"We are sorry to tell you that we will not act on your {c.title} (reference {c.ref}).",
        f"The reason: {_sentence(reason)}" if reason else "We will explain the reason if you reply to this message.",
        COMPLAINT,
    ]


def _completion_done(c: _Context) -> list[str]:
    purpose = c.facts.text("purpose")
    for_purpose = f" for {purpose}" if purpose else ""
    match c.request_kind:
        case RequestKind.ACCESS | RequestKind.EXPORT:
            return _link_paragraphs(c)
        case RequestKind.ERASURE:
            return ["We have erased the personal data we held about you.", *_retained(c)]
        case RequestKind.RECTIFICATION:
            return ["We have corrected your personal data as you asked, in each of our systems that holds it. "
                    "Where we shared your data with others, we have told them of the correction (GDPR Art. 19)."]
        case RequestKind.RESTRICTION:
            return ["We have restricted the processing of your personal data: we keep it stored but do not "
                    "otherwise use it. We will tell you before the restriction is lifted (GDPR Art. 18(3))."]
        case RequestKind.OBJECTION:
            return [f"We have stopped processing your personal data{for_purpose}, as you objected to it."]
        case RequestKind.OPT_OUT:
            return ["We have stopped using your personal data for direct marketing. You will not receive "
                    "marketing messages from us any more."]
        case RequestKind.CONSENT_WITHDRAWAL:
            return [f"We have stopped the processing you had consented to{for_purpose}. Withdrawing consent does "
                    "not affect what was done on its basis before (GDPR Art. 7(3))."]
        case RequestKind.DEACTIVATION:
            return ["Your account has been deactivated: it can no longer be used to sign in. No data was deleted; "
                    "if you also want your data erased, you may ask for that separately."]
    return ["We have completed your request."]


def _link_paragraphs(c: _Context) -> list[str]:
    link = c.facts.text("link", "url")
    if not link:
        return ["A copy of your personal data is ready. We could not include the download link in this message; "
                f"please reply to it, quoting reference {c.ref}, and we will send it to you."]
    expires = c.facts.date("link_expires_at", "expires_at", with_time=True)
    until = f" It works until {expires}." if expires else " It works for a limited time."
    return [
        "A copy of your personal data is ready. You can download it here:",
        link,
        f"The link is personal: please do not forward it.{until} The archive holds your data as JSON and CSV "
        "files, one per collection, with a manifest listing each file and its checksum.",
    ]


def _retained(c: _Context) -> list[str]:
    raw = c.facts.raw("retained")
    grounds: list[str] = []
    if isinstance(raw, list):
        for item in raw:
            ground = item.get("ground") if isinstance(item, dict) else item
            if isinstance(ground, str) and ground.strip() and ground.strip() not in grounds:
                grounds.append(ground.strip())
    if not grounds:
        return []
    return ["We have kept some records because the law requires or allows it (GDPR Art. 17(3)):\n"
            + "\n".join(f"- {g}" for g in grounds)]


def _systems(c: _Context) -> list[str]:
    raw = c.facts.raw("systems")
    if not isinstance(raw, dict) or not raw:
        return []
    states = [str(v) for v in raw.values()]
    na = states.count("not_applicable")
    sentence = f"This covered {len(states)} of our systems" if len(states) > 1 else "This covered one of our systems"
    if na:
        sentence += f"; {na} of them do not support this kind of request, so nothing was done there"
    return [sentence + "."]


def _completion(c: _Context) -> Rendered:
    return f"Your {c.title} is complete", [
        f"Your {c.title} (reference {c.ref}) is complete.",
        *_completion_done(c),
        *_systems(c),
        "If you think something is missing or wrong, please reply to this message. You also have the right to "
        "lodge a complaint with a supervisory authority (GDPR Art. 77).",
    ]


def _cancellation(c: _Context) -> Rendered:
    return f"Your {c.title} was cancelled", [
        f"As you asked, we have cancelled your {c.title} (reference {c.ref}). Nothing was changed in our systems.",
        "You may submit a new request at any time.",
    ]


def _unverified(c: _Context) -> Rendered:
    days = c.facts.text("days")
    within = f"within {days} days" if days else "in time"
    return f"Your {c.title} was closed", [
        f"We could not confirm your identity {within}, so we have closed your {c.title} (reference {c.ref}) "
        "without acting on it. We ask for confirmation to make sure we never hand your data to someone else "
        "(GDPR Art. 12(6)).",
        "You may submit a new request at any time.",
    ]


def _restriction_applied(c: _Context) -> Rendered:
    return "We have restricted the use of your data", [
        "While we look into the question you raised about your personal data (reference "
        f"{c.ref}), we have restricted its processing: we keep it stored but do not otherwise use it, except as the "
        "law allows (GDPR Art. 18(1) and (2)).",
        "We will tell you the outcome, and we will write to you before the restriction is lifted (GDPR Art. 18(3)).",
    ]


def _restriction_lift_notice(c: _Context) -> Rendered:
    lift_on = c.facts.date("lift_on")
    reason = c.facts.text("reason")
    when = f"on {lift_on}" if lift_on else "after a notice period"
    return "The restriction on your data will be lifted", [
        "We are writing, as the law requires (GDPR Art. 18(3)), before we lift the restriction on the processing "
        f"of your personal data (reference {c.ref}). The restriction will be lifted {when}; until then it stays "
        "in place.",
        f"The reason: {_sentence(reason)}" if reason
        else "We have concluded our review and found in favour of continuing the processing.",
        COMPLAINT,
    ]


def _restriction_lifted(c: _Context) -> Rendered:
    on = c.facts.date("lifted_at", "lift_on")
    when = f" on {on}" if on else ""
    return "The restriction on your data was lifted", [
        f"The restriction on the processing of your personal data (reference {c.ref}) was lifted{when}, as we told "
        "you beforehand (GDPR Art. 18(3)).",
        COMPLAINT,
    ]


def _backups_pending(c: _Context) -> Rendered:
    gone_by = c.facts.date("gone_by")
    when = f"by {gone_by}" if gone_by else "when they expire"
    return "Your data is erased; backup copies will follow", [
        f"We have erased your personal data from our live systems (reference {c.ref}).",
        "Copies remain in backups that cannot be edited. We have put them beyond use: they are not restored into "
        f"use or shared, and they are kept secure. They will be deleted {when}, and if a backup is ever restored "
        "before then, your data is erased again.",
        "We will confirm when the last copy is gone.",
    ]


def _admin_reminder(c: _Context) -> Rendered:
    due = c.facts.date("due_at")
    nth = c.facts.text("reminder")
    link = c.facts.text("link", "url")
    paras = [
        f"{c.a_title.capitalize()} (reference {c.ref}, organisation {c.tenant}) is waiting for your decision"
        + (f"; this is reminder {nth}." if nth else "."),
        (f"The legal deadline to answer the person is {due}." if due else "The legal deadline is running.")
        + " Please approve it, or reject it with a reason that will be sent to them (privacy policy 7.1).",
    ]
    if link:
        paras.append(f"Decide here: {link}")
    return f"Decision needed: {c.title} {c.ref}", paras


def _admin_objection_window(c: _Context) -> Rendered:
    closes = c.facts.date("closes_at", "until", with_time=True)
    due = c.facts.date("due_at")
    link = c.facts.text("link", "url")
    paras = [
        f"A person whose account your organisation ({c.tenant}) manages has asked us to restrict the processing "
        f"of their personal data (GDPR Art. 18; reference {c.ref}).",
        "The restriction will go ahead unless you object"
        + (f" before {closes}." if closes else " within the objection window.")
        + " An objection needs a reason, which is recorded (privacy policy 7.1).",
    ]
    if due:
        paras.append(f"The legal deadline to answer the person is {due}.")
    if link:
        paras.append(f"Object here: {link}")
    return f"Restriction request {c.ref}: you may object", paras


def _escalation(c: _Context) -> Rendered:
    due = c.facts.date("due_at")
    waiting = c.facts.text("waiting_for")
    return f"Escalation: {c.title} {c.ref} is close to its deadline", [
        f"{c.a_title.capitalize()} (reference {c.ref}, organisation {c.tenant}) is "
        + (f"still waiting for {waiting}" if waiting else "not yet complete")
        + (f", and its legal deadline is {due}." if due else ", and its legal deadline is close."),
        "Please make sure it is answered in time (GDPR Art. 12(3)); past the deadline the person may complain to "
        "a supervisory authority.",
    ]


TEMPLATES: dict[NotificationKind, Callable[[_Context], Rendered]] = {
    NotificationKind.RECEIPT: _receipt,
    NotificationKind.EXTENSION: _extension,
    NotificationKind.REJECTION: _rejection,
    NotificationKind.COMPLETION: _completion,
    NotificationKind.CANCELLATION: _cancellation,
    NotificationKind.UNVERIFIED: _unverified,
    NotificationKind.RESTRICTION_APPLIED: _restriction_applied,
    NotificationKind.RESTRICTION_LIFT_NOTICE: _restriction_lift_notice,
    NotificationKind.RESTRICTION_LIFTED: _restriction_lifted,
    NotificationKind.ADMIN_REMINDER: _admin_reminder,
    NotificationKind.ADMIN_OBJECTION_WINDOW: _admin_objection_window,
    NotificationKind.ESCALATION: _escalation,
    NotificationKind.BACKUPS_PENDING: _backups_pending,
}


def render(n: Notification) -> tuple[str, str]:
    """The subject line and plain-text body of a notification.

    Facts the template does not use are ignored; a missing fact gives a sentence that does without it.
    """
    ctx = _Context(ref=n.request_id, tenant=n.tenant, request_kind=n.request_kind, facts=_Facts(n.facts))
    subject, paragraphs = TEMPLATES[n.kind](ctx)
    body = "\n\n".join(["Hello,", *paragraphs, SIGNATURE]) + "\n"
    return subject, body
