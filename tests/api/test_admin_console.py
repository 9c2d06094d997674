"""The admin console (/admin) through aiohttp's test client, on the live worker (real workflows, stub activities).

Sign-in with an API key, the session cookie's flags and signature, CSRF refusals, the queue, the forms
sending the same updates as the JSON API, their refusals shown as pages, and tenant isolation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from temporalio.testing import WorkflowEnvironment

from api.admin.revocations import REFRESH_SECONDS
from api.admin.session import LOGIN_COOKIE, SESSION_COOKIE, SESSION_SECONDS, SessionKeys, revocation_key
from api.auth import Principal
from tests.api.support import api_client, auth, create, dispute_body, raw_token, wait_for_step
from tests.helpers import HASH_SECRET_ENV, api_settings, fides_settings
from workers.config import ApiToken, Settings, SystemSettings, TemporalSettings
from workers.worker import request_worker
from workflows.messages import DisputeStatus, DisputeStep
from workflows.models import RequestStatus, Step, SystemState

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The first CSRF token on a page."""
    match = CSRF.search(html)
    assert match, html
    return match.group(1)


async def sign_in(tc: TestClient, token: str) -> str:
    """Sign in to the console with ``token``'s API key; the CSRF token of the session's forms."""
    page = await tc.get("/admin/login")
    assert page.status == 200
    resp = await tc.post("/admin/login", data={"csrf_token": csrf_of(await page.text()), "api_key": raw_token(token)})
    assert resp.status == 200, await resp.text()  # followed the redirect to the queue
    assert str(resp.url).endswith("/admin/")
    return csrf_of(await resp.text())


async def awaiting_approval(tc: TestClient, temporal_env: WorkflowEnvironment, token: str = "portal-acme",
                            kind: str = "erasure") -> str:
    """A new request of ``token``'s tenant, waiting at the approval gate."""
    rid = await create(tc, token, kind)
    await wait_for_step(temporal_env.client.get_workflow_handle(rid), Step.AWAITING_APPROVAL)
    return rid


async def queue_showing(tc: TestClient, *request_ids: str, timeout: float = 10.0) -> str:
    """The queue page once it lists every one of ``request_ids`` (Temporal's visibility is eventually consistent)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await tc.get("/admin/")
        assert resp.status == 200
        html = await resp.text()
        if all(rid in html for rid in request_ids) or time.monotonic() > deadline:
            return html
        await asyncio.sleep(0.2)


async def status_of(temporal_env: WorkflowEnvironment, rid: str) -> RequestStatus:
    """The request's status, straight from the workflow."""
    return await temporal_env.client.get_workflow_handle(rid).query("status", result_type=RequestStatus)


# --- sign-in and the session cookie -----------------------------------------------------------------


async def test_sign_in_sets_a_signed_http_only_strict_cookie(live_api: TestClient) -> None:
    page = await live_api.get("/admin/login")
    assert page.status == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    resp = await live_api.post("/admin/login", allow_redirects=False,
                               data={"csrf_token": csrf_of(await page.text()), "api_key": raw_token("admin-acme")})
    assert resp.status == 303 and resp.headers["Location"] == "/admin/"
    [cookie] = [c for c in resp.headers.getall("Set-Cookie") if c.startswith(SESSION_COOKIE + "=")]
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/admin" in attributes
    assert f"max-age={SESSION_SECONDS}" in attributes
    assert "secure" not in attributes  # the public URL is http here
    assert raw_token("admin-acme") not in cookie
    queue = await live_api.get("/admin/")
    assert queue.status == 200
    assert "admin-acme" in await queue.text()


async def test_the_cookie_is_secure_behind_https(live_settings: Settings, temporal_env: WorkflowEnvironment) -> None:
    settings = live_settings.model_copy(
        update={"api": live_settings.api.model_copy(update={"public_url": "https://dsr.example.org"})})
    async with api_client(settings, temporal_env.client) as tc:
        page = await tc.get("/admin/login")
        login_cookie = page.headers["Set-Cookie"]
        assert login_cookie.startswith(LOGIN_COOKIE + "=") and "Secure" in login_cookie
        nonce = SimpleCookie(login_cookie)[LOGIN_COOKIE].value  # a Secure cookie is not sent back over http
        resp = await tc.post("/admin/login", allow_redirects=False, cookies={LOGIN_COOKIE: nonce},
                             data={"csrf_token": csrf_of(await page.text()), "api_key": raw_token("admin-acme")})
        assert resp.status == 303
        [cookie] = [c for c in resp.headers.getall("Set-Cookie") if c.startswith(SESSION_COOKIE + "=")]
        assert "secure" in [a.strip().lower() for a in cookie.split(";")]


@pytest.mark.parametrize(("key", "status", "says"), [
    ("not-a-configured-key", 401, "This API key is not valid."),
    (raw_token("portal-acme"), 403, "role cannot use the console"),
])
async def test_sign_in_is_refused_for_a_wrong_key_or_a_portal_key(live_api: TestClient, key: str, status: int,
                                                                  says: str) -> None:
    page = await live_api.get("/admin/login")
    resp = await live_api.post("/admin/login", allow_redirects=False,
                               data={"csrf_token": csrf_of(await page.text()), "api_key": key})
    assert resp.status == status
    assert resp.content_type == "text/html"
    assert says in await resp.text()
    assert key not in await resp.text()
    assert not [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith(SESSION_COOKIE + "=")]
    assert (await live_api.get("/admin/", allow_redirects=False)).headers["Location"] == "/admin/login"
    # The refusal's form works for the next try.
    retry = await live_api.post("/admin/login", data={"csrf_token": csrf_of(await resp.text()),
                                                      "api_key": raw_token("admin-acme")})
    assert retry.status == 200 and str(retry.url).endswith("/admin/")


async def test_sign_in_without_its_csrf_token_is_refused(live_api: TestClient) -> None:
    await live_api.get("/admin/login")  # the nonce cookie, but the form's token is not sent
    resp = await live_api.post("/admin/login", data={"api_key": raw_token("admin-acme")}, allow_redirects=False)
    assert resp.status == 403
    assert "security token" in await resp.text()
    assert not [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith(SESSION_COOKIE + "=")]


async def test_pages_need_a_session_and_the_api_still_needs_a_token(live_api: TestClient) -> None:
    resp = await live_api.get("/admin/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login"
    live_api.session.cookie_jar.update_cookies({SESSION_COOKIE: "eyJ2IjoxfQ.Zm9yZ2Vk"})
    assert (await live_api.get("/admin/", allow_redirects=False)).status == 303
    resp = await live_api.post("/admin/requests/req_0123456789abcdef/decision", data={"outcome": "approve"})
    assert resp.status == 403 and resp.content_type == "text/html"
    assert (await live_api.get("/administrator")).status == 401  # only /admin and /admin/... are the console's
    assert (await live_api.get("/v1/tasks")).status == 401


async def test_sign_out_ends_the_session(live_api: TestClient) -> None:
    csrf = await sign_in(live_api, "admin-acme")
    cookie = live_api.session.cookie_jar.filter_cookies(live_api.make_url("/admin/"))[SESSION_COOKIE].value
    resp = await live_api.post("/admin/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login"
    live_api.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})  # the old cookie, replayed
    assert (await live_api.get("/admin/", allow_redirects=False)).status == 303


async def test_sign_out_ends_the_session_on_every_replica(live_settings: Settings, temporal_env: WorkflowEnvironment,
                                                           orchestrator_db: str) -> None:
    """Two API processes behind a load balancer share the orchestrator's database: a cookie signed out on one
    is refused by the other within the refresh period, and the table holds no session id, only its hash."""
    settings = live_settings.model_copy(update={"database_url": orchestrator_db})
    async with api_client(settings, temporal_env.client) as one, api_client(settings, temporal_env.client) as two:
        csrf = await sign_in(one, "admin-acme")
        cookie = one.session.cookie_jar.filter_cookies(one.make_url("/admin/"))[SESSION_COOKIE].value
        two.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})
        assert (await two.get("/admin/", allow_redirects=False)).status == 200  # the same session on both
        resp = await one.post("/admin/logout", data={"csrf_token": csrf}, allow_redirects=False)
        assert resp.status == 303
        deadline = time.monotonic() + 5 * REFRESH_SECONDS
        while (await two.get("/admin/", allow_redirects=False)).status == 200:
            assert time.monotonic() < deadline, "the other replica still accepts the signed-out cookie"
            await asyncio.sleep(0.2)
        assert (await two.get("/admin/", allow_redirects=False)).status == 303
    conn = await asyncpg.connect(orchestrator_db)
    try:
        rows = [r["session_sha256"] for r in await conn.fetch("SELECT session_sha256 FROM dsr_console_revocation")]
    finally:
        await conn.close()
    encoded = cookie.split(".")[0]
    session_id = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))["s"]
    assert revocation_key(session_id) in rows and session_id not in rows


def test_session_cookies_are_signed_expire_and_follow_the_configured_token() -> None:
    token = ApiToken(name="admin-x", sha256="a" * 64, role="admin", tenant="acme")
    keys = SessionKeys(b"s" * 32, [token], secure=False)
    principal = Principal(name="admin-x", role="admin", tenant="acme")
    cookie, session = keys.issue(principal, now=1000)
    assert keys.read(cookie, now=1001) == session
    assert keys.read(cookie, now=1000 + SESSION_SECONDS) is None  # expired
    payload, mac = cookie.split(".")
    assert keys.read(payload[:-2] + "xx." + mac, now=1001) is None  # tampered
    assert SessionKeys(b"t" * 32, [token], secure=False).read(cookie, now=1001) is None  # another secret
    rotated = token.model_copy(update={"sha256": "b" * 64})
    assert SessionKeys(b"s" * 32, [rotated], secure=False).read(cookie, now=1001) is None  # the key was rotated
    moved = token.model_copy(update={"tenant": "globex"})
    assert SessionKeys(b"s" * 32, [moved], secure=False).read(cookie, now=1001) is None  # another tenant now
    assert SessionKeys(b"s" * 32, [], secure=False).read(cookie, now=1001) is None  # the token was removed
    assert keys.csrf_ok(session.session_id, keys.csrf_token(session.session_id))
    assert not keys.csrf_ok(session.session_id, keys.csrf_token("another-session"))
    assert not keys.csrf_ok(session.session_id, None)
    keys.revoke(session, now=time.time())
    assert keys.read(cookie, now=1001) is None


# --- CSRF on the forms -------------------------------------------------------------------------------


async def test_a_decision_without_or_with_a_wrong_csrf_token_is_refused(
    live_api: TestClient, temporal_env: WorkflowEnvironment
) -> None:
    rid = await awaiting_approval(live_api, temporal_env)
    await sign_in(live_api, "admin-acme")
    other = SessionKeys(b"x" * 32, [], secure=False).csrf_token("another-session")
    for data in ({"outcome": "approve"}, {"outcome": "approve", "csrf_token": other}):
        resp = await live_api.post(f"/admin/requests/{rid}/decision", data=data, allow_redirects=False)
        assert resp.status == 403, await resp.text()
        assert resp.content_type == "text/html"
        assert "security token" in await resp.text()
    resp = await live_api.post(f"/admin/requests/{rid}/decision", json={"outcome": "approve"})
    assert resp.status == 403  # JSON carries no form token either
    assert (await status_of(temporal_env, rid)).decision is None


# --- the queue, the request page and the actions -------------------------------------------------------


async def test_the_queue_lists_the_tenants_pending_approvals_by_due_date(
    live_api: TestClient, temporal_env: WorkflowEnvironment
) -> None:
    first = await awaiting_approval(live_api, temporal_env)
    second = await awaiting_approval(live_api, temporal_env, kind="access")
    theirs = await awaiting_approval(live_api, temporal_env, token="portal-globex")
    await sign_in(live_api, "admin-acme")
    html = await queue_showing(live_api, first, second)
    assert first in html and second in html
    assert html.index(first) < html.index(second)  # same deadline rule, received first: due first
    assert theirs not in html
    assert "approval" in html
    assert re.search(rf"{first}.*?<td class=\"days\">(\d+)</td>", html, re.S).group(1) in {"30", "31", "32"}


async def test_approving_from_the_console_records_the_admins_decision(
    live_api: TestClient, temporal_env: WorkflowEnvironment
) -> None:
    rid = await awaiting_approval(live_api, temporal_env)
    csrf = await sign_in(live_api, "admin-acme")
    page = await live_api.get(f"/admin/requests/{rid}")
    html = await page.text()
    assert page.status == 200 and 'id="approve-form"' in html and 'id="reject-form"' in html
    assert "jane.doe" not in html and "u-1001" not in html  # nothing of the subject
    resp = await live_api.post(f"/admin/requests/{rid}/decision",
                               data={"csrf_token": csrf, "outcome": "approve", "reason": "checked by the DPO"})
    assert resp.status == 200 and str(resp.url).endswith(f"/admin/requests/{rid}?done=decision")
    html = await resp.text()
    assert "The decision is recorded." in html and "Approved" in html and "checked by the DPO" in html
    decision = (await status_of(temporal_env, rid)).decision
    assert decision is not None and decision.outcome == "approve" and decision.actor == "admin-acme"

    # A second decision is refused by the workflow: its reason on the page, no stack trace.
    resp = await live_api.post(f"/admin/requests/{rid}/decision",
                               data={"csrf_token": csrf, "outcome": "reject", "reason": "changed my mind"})
    assert resp.status == 409 and resp.content_type == "text/html"
    html = await resp.text()
    assert 'role="alert"' in html and "Traceback" not in html
    assert (await status_of(temporal_env, rid)).decision.outcome == "approve"


async def test_a_rejection_needs_a_reason_and_reasons_are_escaped(
    live_api: TestClient, temporal_env: WorkflowEnvironment
) -> None:
    rid = await awaiting_approval(live_api, temporal_env)
    csrf = await sign_in(live_api, "admin-acme")
    resp = await live_api.post(f"/admin/requests/{rid}/decision",
                               data={"csrf_token": csrf, "outcome": "reject", "reason": "  "})
    assert resp.status == 422
    assert "a rejection needs a reason" in await resp.text()
    assert (await status_of(temporal_env, rid)).decision is None

    resp = await live_api.post(f"/admin/requests/{rid}/extension", data={
        "csrf_token": csrf, "months": "2", "reason": "<script>alert(1)</script> ten years of records"})
    assert resp.status == 200, await resp.text()
    html = await resp.text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; ten years of records" in html
    assert "<script>" not in html
    extension = (await status_of(temporal_env, rid)).extension
    assert extension is not None and extension.months == 2 and extension.actor == "admin-acme"


async def test_an_admin_cannot_see_or_act_on_another_tenants_request(
    live_api: TestClient, temporal_env: WorkflowEnvironment
) -> None:
    theirs = await awaiting_approval(live_api, temporal_env, token="portal-globex")
    csrf = await sign_in(live_api, "admin-acme")
    page = await live_api.get(f"/admin/requests/{theirs}")
    assert page.status == 404 and page.content_type == "text/html"
    assert "globex" not in await page.text()
    for action, data in [("decision", {"outcome": "approve"}), ("extension", {"months": "1", "reason": "r"}),
                         ("objection", {"reason": "r"}), ("retry", {"system": "appdb"})]:
        resp = await live_api.post(f"/admin/requests/{theirs}/{action}", data={"csrf_token": csrf, **data})
        assert resp.status == 404, (action, await resp.text())
    resp = await live_api.post(f"/admin/requests/{theirs}/tasks/appdb/confirmation", data={"csrf_token": csrf})
    assert resp.status == 404
    status = await status_of(temporal_env, theirs)
    assert status.step == Step.AWAITING_APPROVAL and status.decision is None and status.extension is None
    # Its own admin does see it.
    live_api.session.cookie_jar.clear()
    await sign_in(live_api, "admin-globex")
    assert theirs in await queue_showing(live_api, theirs)
    assert (await live_api.get(f"/admin/requests/{theirs}")).status == 200
    # Now that visibility lists it, acme's admin still does not see it.
    live_api.session.cookie_jar.clear()
    await sign_in(live_api, "admin-acme")
    assert theirs not in await (await live_api.get("/admin/")).text()


async def test_an_auditor_reads_but_cannot_act(live_api: TestClient, temporal_env: WorkflowEnvironment) -> None:
    rid = await awaiting_approval(live_api, temporal_env)
    csrf = await sign_in(live_api, "auditor")
    assert rid in await queue_showing(live_api, rid)  # every tenant's
    page = await (await live_api.get(f"/admin/requests/{rid}")).text()
    assert "<form method=\"post\" action=\"/admin/requests/" not in page
    resp = await live_api.post(f"/admin/requests/{rid}/decision", data={"csrf_token": csrf, "outcome": "approve"})
    assert resp.status == 403
    assert "needs the admin role" in await resp.text()
    assert (await status_of(temporal_env, rid)).decision is None


async def test_a_privacy_officer_extends_but_does_not_decide(
    live_api: TestClient, temporal_env: WorkflowEnvironment
) -> None:
    ours = await awaiting_approval(live_api, temporal_env)
    theirs = await awaiting_approval(live_api, temporal_env, token="portal-globex")
    csrf = await sign_in(live_api, "officer")  # every tenant's
    html = await queue_showing(live_api, ours, theirs)
    assert ours in html and theirs in html
    page = await (await live_api.get(f"/admin/requests/{theirs}")).text()
    assert 'id="extend-form"' in page and 'id="approve-form"' not in page
    resp = await live_api.post(f"/admin/requests/{theirs}/decision", data={"csrf_token": csrf, "outcome": "approve"})
    assert resp.status == 403
    resp = await live_api.post(f"/admin/requests/{theirs}/extension",
                               data={"csrf_token": csrf, "months": "1", "reason": "archive search"})
    assert resp.status == 200, await resp.text()
    extension = (await status_of(temporal_env, theirs)).extension
    assert extension is not None and extension.actor == "officer"
    # One limited to acme sees acme's only.
    live_api.session.cookie_jar.clear()
    await sign_in(live_api, "officer-acme")
    assert (await live_api.get(f"/admin/requests/{theirs}")).status == 404
    assert (await live_api.get(f"/admin/requests/{ours}")).status == 200


async def test_a_dispute_is_resolved_from_the_console_with_a_reason(
    live_api: TestClient, temporal_env: WorkflowEnvironment
) -> None:
    resp = await live_api.post("/v1/disputes", json=dispute_body(), headers=auth("admin-acme"))
    assert resp.status == 201, await resp.text()
    dispute_id = (await resp.json())["id"]
    handle = temporal_env.client.get_workflow_handle(dispute_id)
    await wait_for_step(handle, DisputeStep.RESTRICTED, status_type=DisputeStatus)
    csrf = await sign_in(live_api, "admin-acme")
    assert dispute_id in await queue_showing(live_api, dispute_id)
    page = await live_api.get(f"/admin/disputes/{dispute_id}")
    html = await page.text()
    assert page.status == 200 and 'id="resolve-form"' in html
    assert "contests the accuracy" not in html  # the grounds stay in the encrypted input
    resp = await live_api.post(f"/admin/disputes/{dispute_id}/resolution",
                               data={"csrf_token": csrf, "outcome": "company_prevails", "reason": ""})
    assert resp.status == 422 and "reason" in await resp.text()
    resp = await live_api.post(f"/admin/disputes/{dispute_id}/resolution",
                               data={"csrf_token": csrf, "outcome": "company_prevails", "reason": "records accurate"})
    assert resp.status == 200, await resp.text()
    assert "The dispute is resolved." in await resp.text()
    status = await handle.query("status", result_type=DisputeStatus)
    assert status.resolution is not None and status.resolution.actor == "admin-acme"
    live_api.session.cookie_jar.clear()
    await sign_in(live_api, "admin-globex")
    assert (await live_api.get(f"/admin/disputes/{dispute_id}")).status == 404


async def test_a_manual_task_waits_in_the_queue_and_is_confirmed_from_the_console(
    temporal_env: WorkflowEnvironment, fides_db: str, orchestrator_db: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the real worker and activities on Fides' example, and a manual-task partner."""
    monkeypatch.setenv(HASH_SECRET_ENV, "console-secret")
    tokens = [ApiToken(name=name, sha256=hashlib.sha256(raw_token(name).encode()).hexdigest(), role=role,
                       tenant="acme") for name, role in (("portal-acme", "portal"), ("admin-acme", "admin"))]
    settings = fides_settings(fides_db, tmp_path, api=api_settings(tokens),
                              temporal=TemporalSettings(task_queue="console-" + uuid.uuid4().hex[:8]))
    settings.systems["print_shop"] = SystemSettings(type="manual_task", instructions="Delete the customer by hand.")
    async with (
        request_worker(settings, temporal_env.client, database_url=orchestrator_db) as worker,
        worker,
        api_client(settings, temporal_env.client) as tc,
    ):
        rid = await awaiting_approval(tc, temporal_env)
        csrf = await sign_in(tc, "admin-acme")
        resp = await tc.post(f"/admin/requests/{rid}/decision", data={"csrf_token": csrf, "outcome": "approve"})
        assert resp.status == 200, await resp.text()
        handle = temporal_env.client.get_workflow_handle(rid)
        deadline = time.monotonic() + 30
        while True:
            status = await status_of(temporal_env, rid)
            shop = status.systems.get("print_shop")
            if shop is not None and shop.state == SystemState.AWAITING_PARTNER:
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)
        assert status.step != Step.COMPLETED
        html = await queue_showing(tc, "manual task: print_shop")
        assert rid in html and "manual task: print_shop" in html
        page = await (await tc.get(f"/admin/requests/{rid}")).text()
        assert "Delete the customer by hand." in page
        resp = await tc.post(f"/admin/requests/{rid}/tasks/print_shop/confirmation", data={"csrf_token": csrf})
        assert resp.status == 200, await resp.text()
        assert "The manual task is confirmed." in await resp.text()
        status = await wait_for_step(handle, Step.COMPLETED, timeout=60)
    assert status.systems["print_shop"].state == SystemState.DONE
