"""The console's pages and forms (server-rendered with aiohttp-jinja2, no JavaScript).

Every page needs a session (:mod:`api.admin.session`) and every form a CSRF token. Errors are pages too,
never problem documents or stack traces: a refusal by the workflow shows its reason on the request's page,
an unexpected error a page that says it was logged (by type and stack only, as the JSON API logs them).
Pages show what the JSON API's status shows and nothing more: no identity of the subject.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from api.admin.actions import ACTIONS, DONE_MESSAGES, confirm_task, find, may, send_update
from api.admin.queue import build_queue, days_left
from api.admin.revocations import publish_revocation
from api.admin.session import (
    CODEC_COOKIE_PATH,
    CODEC_SESSION_COOKIE,
    CONSOLE_ROLES,
    CSRF_FIELD,
    LOGIN_COOKIE,
    LOGIN_NONCE_SECONDS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    SessionKeys,
)
from api.auth import PRINCIPAL, TokenTable
from api.common import CLIENT, REQUEST_ID, SETTINGS, current_status
from api.disputes import DISPUTES
from api.problems import Problem, log_unexpected, new_instance
from api.requests_routes import REQUESTS
from workers.config import Settings
from workflows.messages import DisputeStatus, DisputeStep
from workflows.models import TERMINAL_STEPS, RequestStatus, Step, SystemState

JINJA = web.AppKey("admin_jinja", jinja2.Environment)
KEYS = web.AppKey("admin_session_keys", SessionKeys)
TOKENS = web.AppKey("admin_token_table", TokenTable)
SESSION = web.RequestKey("admin_session", Session)
FORM = web.RequestKey("admin_form", MultiDictProxy)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- rendering -----------------------------------------------------------------------------------


async def render(request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200,
                 before_send: Callable[[web.Response], None] | None = None) -> web.StreamResponse:
    """Render ``template`` as an HTML page.

    An error page is prepared (its headers sent) here, so that the API's problem middleware, which turns
    every unprepared 4xx/5xx into problem+json for API clients, leaves the console's HTML alone.
    """
    session = request.get(SESSION)
    page = {"message": None, "error": None, "session": session, "principal": session.principal if session else None,
            "csrf": request.app[KEYS].csrf_token(session.session_id) if session else "", **context}
    text = aiohttp_jinja2.render_string(template, request, page, app_key=JINJA)
    response = web.Response(text=text, status=status, content_type="text/html", headers=SECURITY_HEADERS)
    if before_send is not None:  # e.g. cookies, which must be set before an error page is prepared
        before_send(response)
    if status >= 400:
        await response.prepare(request)
    return response


async def error_page(request: web.Request, status: int, title: str, detail: str) -> web.StreamResponse:
    """A page for an error: its status, a title and a detail that carries no submitted value."""
    return await render(request, "error.html", {"title": title, "detail": detail}, status=status)


def problem_message(problem: Problem) -> str:
    """A problem's detail for people: a form's invalid fields named with what is wrong with each."""
    errors = problem.extensions.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for err in errors:
            where = str(err.get("pointer", "#")).removeprefix("#/").replace("/", ".") or "form"
            parts.append(f"{where}: {str(err.get('detail', 'invalid value')).removeprefix('Value error, ')}")
        return "; ".join(parts)
    return problem.detail


def _redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location, headers=SECURITY_HEADERS)


# --- sessions and forms --------------------------------------------------------------------------


def console_view(view: View) -> View:
    """Wrap a console handler: require a session (and, for POST, a valid CSRF token); errors as pages."""

    @functools.wraps(view)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        keys = request.app[KEYS]
        session = keys.read(request.cookies.get(SESSION_COOKIE))
        try:
            if session is None:
                if request.method == "GET":
                    raise _redirect("/admin/login")
                return await error_page(request, 403, "Signed out",
                                        "Your session has ended. Sign in again, then repeat the action.")
            request[SESSION] = session
            request[PRINCIPAL] = session.principal
            if request.method == "POST":
                form = await request.post()
                if not keys.csrf_ok(session.session_id, form.get(CSRF_FIELD)):
                    return await csrf_refused(request)
                request[FORM] = form
            return await view(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return await error_page(request, exc.status, exc.reason, "This page cannot be shown.")
        except Problem as problem:
            return await error_page(request, problem.status, problem.title, problem_message(problem))
        except Exception as exc:
            instance = new_instance()
            log_unexpected(request, exc, instance)
            return await error_page(request, 500, "Something went wrong",
                                    f"An unexpected error occurred; it has been logged as {instance}.")

    return wrapped


async def csrf_refused(request: web.Request) -> web.StreamResponse:
    """The 403 page for a form without its CSRF token, or with another one."""
    return await error_page(request, 403, "Form refused",
                            "This form did not come from this console (its security token is missing or wrong). "
                            "Reload the page and try again.")


async def login_form(request: web.Request, *, error: str | None = None, status: int = 200) -> web.StreamResponse:
    """``GET /admin/login``: the sign-in form, with a fresh nonce cookie that keys its CSRF token."""
    keys = request.app[KEYS]
    nonce = secrets.token_urlsafe(18)
    oidc = request.app[SETTINGS].api.console_oidc is not None and request.app[SETTINGS].api.oidc is not None
    return await render(request, "login.html", {"login_csrf": keys.csrf_token("login:" + nonce), "error": error,
                                                "oidc": oidc}, status=status,
                        before_send=lambda r: keys.set_cookie(r, LOGIN_COOKIE, nonce, LOGIN_NONCE_SECONDS))


async def login_page(request: web.Request) -> web.StreamResponse:
    """``GET /admin/login``: the sign-in form (the queue when already signed in)."""
    if request.app[KEYS].read(request.cookies.get(SESSION_COOKIE)) is not None:
        raise _redirect("/admin/")
    return await login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /admin/login``: sign in with an API key of an admin, privacy officer or auditor."""
    keys = request.app[KEYS]
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not keys.csrf_ok("login:" + nonce, form.get(CSRF_FIELD)):
        return await csrf_refused(request)
    api_key = form.get("api_key")
    principal = request.app[TOKENS].authenticate(api_key.strip()) if isinstance(api_key, str) else None
    if principal is None:
        return await login_form(request, error="This API key is not valid.", status=401)
    if principal.role not in CONSOLE_ROLES:
        return await login_form(request, error="This API key's role cannot use the console.", status=403)
    cookie, _ = keys.issue(principal)
    response = _redirect("/admin/")
    keys.set_cookie(response, SESSION_COOKIE, cookie, SESSION_SECONDS)
    keys.set_cookie(response, CODEC_SESSION_COOKIE, cookie, SESSION_SECONDS, path=CODEC_COOKIE_PATH)
    keys.clear_cookie(response, LOGIN_COOKIE)
    raise response


@console_view
async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /admin/logout``: end the session here and in the browser."""
    keys = request.app[KEYS]
    keys.revoke(request[SESSION])
    await publish_revocation(request.app, request[SESSION])  # the other replicas refuse the cookie too
    response = _redirect("/admin/login")
    keys.clear_cookie(response, SESSION_COOKIE)
    keys.clear_cookie(response, CODEC_SESSION_COOKIE, path=CODEC_COOKIE_PATH)
    raise response


# --- pages -----------------------------------------------------------------------------------------


@console_view
async def queue_page(request: web.Request) -> web.StreamResponse:
    """``GET /admin/``: what waits for a person in the tenant, soonest deadline first."""
    queue = await build_queue(request.app[CLIENT], request.app[SETTINGS], request[SESSION].principal)
    return await render(request, "queue.html", {"queue": queue})


def timeline(status: RequestStatus) -> list[tuple[datetime, str, str]]:
    """The request's recorded steps, oldest first: (when, what, detail)."""
    events: list[tuple[datetime, str, str]] = [(status.received_at, "Received", f"{status.kind.value} request")]
    if status.verification is not None:
        v = status.verification
        events.append((v.verified_at, "Identity verified", f"by {v.actor} ({v.method})"))
    if status.decision is not None:
        d = status.decision
        what = "Approved" if d.outcome == "approve" else "Rejected"
        events.append((d.decided_at, what, f"by {d.actor}" + (f": {d.reason}" if d.reason else "")))
    if status.extension is not None:
        e = status.extension
        events.append((e.extended_at, "Deadline extended",
                       f"by {e.actor}, {e.months} month(s), to {e.new_due_at:%Y-%m-%d}: {e.reason}"))
    if status.objection is not None:
        o = status.objection
        events.append((o.objected_at, "Objection", f"by {o.actor}: {o.reason}"))
    if status.cancellation is not None:
        c = status.cancellation
        events.append((c.cancelled_at, "Cancelled", f"by {c.actor}" + (f": {c.reason}" if c.reason else "")))
    if status.escalated_at is not None:
        events.append((status.escalated_at, "Escalated", "the privacy office was alerted"))
    if status.lifting is not None:
        lf = status.lifting
        events.append((lf.decided_at, "Lifting decided", f"by {lf.actor}, on {lf.lift_on:%Y-%m-%d}: {lf.reason}"))
    if status.lifted_at is not None:
        events.append((status.lifted_at, "Restriction lifted", ""))
    if status.completed_at is not None:
        events.append((status.completed_at, status.step.value.replace("_", " ").capitalize(),
                       status.outcome_reason or ""))
    return sorted(events, key=lambda event: event[0])


def request_actions(status: RequestStatus, session: Session, settings: Settings) -> dict[str, Any]:
    """Which forms the request's page offers the signed-in user, given its step and their role."""
    principal = session.principal
    running = status.step not in TERMINAL_STEPS
    manual = {name for name, cfg in settings.systems.items() if cfg.type == "manual_task"}
    return {
        "decide": may(principal, "decision") and status.step == Step.AWAITING_APPROVAL,
        "object": may(principal, "objection") and status.step == Step.OBJECTION_WINDOW,
        "extend": may(principal, "extension") and running and status.extension is None,
        "lift": may(principal, "lifting") and status.step == Step.RESTRICTED and status.lifting is None,
        "retry": [name for name, s in status.systems.items()
                  if may(principal, "retry") and s.state == SystemState.NEEDS_ATTENTION],
        "confirm": [name for name, s in status.systems.items()
                    if may(principal, "confirmation") and name in manual and s.state == SystemState.AWAITING_PARTNER],
    }


async def _request_page(request: web.Request, request_id: str, *, message: str | None = None,
                        error: str | None = None, status_code: int = 200) -> web.StreamResponse:
    principal = request[SESSION].principal
    found = await find(request.app, REQUESTS, request_id, principal)
    request[REQUEST_ID] = request_id
    status = await current_status(request.app[CLIENT], REQUESTS, found)
    settings = request.app[SETTINGS]
    instructions = {name: cfg.options().get("instructions") for name, cfg in settings.systems.items()
                    if cfg.type == "manual_task"}
    return await render(request, "request.html", {
        "status": status,
        "timeline": timeline(status),
        "days_left": days_left(status.due_at, datetime.now(UTC)),
        "actions": request_actions(status, request[SESSION], settings),
        "instructions": instructions,
        "message": message,
        "error": error,
    }, status=status_code)


@console_view
async def request_page(request: web.Request) -> web.StreamResponse:
    """``GET /admin/requests/{id}``: the request's timeline, systems, evidence and the forms that apply."""
    done = request.query.get("done", "")
    return await _request_page(request, request.match_info["id"], message=DONE_MESSAGES.get(done))


@console_view
async def request_action(request: web.Request) -> web.StreamResponse:
    """``POST /admin/requests/{id}/{action}``: send the action's update; back to the page, or its refusal there."""
    request_id, name = request.match_info["id"], request.match_info["action"]
    action = ACTIONS.get(name)
    if action is None or action.route.resource is not REQUESTS:
        raise web.HTTPNotFound()
    try:
        await send_update(request, action, request_id, request[FORM])
    except Problem as problem:
        if problem.status not in (409, 422, 503):
            raise
        return await _request_page(request, request_id, error=problem_message(problem), status_code=problem.status)
    raise _redirect(f"/admin/requests/{request_id}?done={name}")


@console_view
async def task_confirmation(request: web.Request) -> web.StreamResponse:
    """``POST /admin/requests/{id}/tasks/{system}/confirmation``: a person confirms a manual task is done."""
    request_id = request.match_info["id"]
    if not await confirm_task(request, request_id, request.match_info["system"]):
        return await _request_page(request, request_id, error="This task was already closed; nothing changed.",
                                   status_code=409)
    raise _redirect(f"/admin/requests/{request_id}?done=confirmation")


async def _dispute_page(request: web.Request, dispute_id: str, *, message: str | None = None,
                        error: str | None = None, status_code: int = 200) -> web.StreamResponse:
    found = await find(request.app, DISPUTES, dispute_id, request[SESSION].principal)
    request[REQUEST_ID] = dispute_id
    status: DisputeStatus = await current_status(request.app[CLIENT], DISPUTES, found)
    can_resolve = may(request[SESSION].principal, "resolution") and status.step == DisputeStep.RESTRICTED
    return await render(request, "dispute.html", {"status": status, "can_resolve": can_resolve,
                                                  "message": message, "error": error}, status=status_code)


@console_view
async def dispute_page(request: web.Request) -> web.StreamResponse:
    """``GET /admin/disputes/{id}``: the dispute's restriction and its resolution form."""
    return await _dispute_page(request, request.match_info["id"],
                               message=DONE_MESSAGES.get(request.query.get("done", "")))


@console_view
async def dispute_resolution(request: web.Request) -> web.StreamResponse:
    """``POST /admin/disputes/{id}/resolution``: resolve the dispute, with the required reason."""
    dispute_id = request.match_info["id"]
    try:
        await send_update(request, ACTIONS["resolution"], dispute_id, request[FORM])
    except Problem as problem:
        if problem.status not in (409, 422, 503):
            raise
        return await _dispute_page(request, dispute_id, error=problem_message(problem), status_code=problem.status)
    raise _redirect(f"/admin/disputes/{dispute_id}?done=resolution")


async def to_console(request: web.Request) -> web.StreamResponse:
    """``GET /admin``: to the queue."""
    raise _redirect("/admin/")
