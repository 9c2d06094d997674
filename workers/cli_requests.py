"""``dsr request create|show|list|cancel``, ``dsr decide``, ``dsr extend``, ``dsr dispute open|show|resolve``.

Each command is one call of the HTTP API (workers/cli_http.py) with the token in ``DSR_API_TOKEN``.
Exit status: 0 when the call succeeded (with ``--wait``: when the request completed), 1 when the request
failed, was rejected or cancelled, or the API failed, 2 for input the CLI or the API refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from workers.cli_http import ApiClient, add_api_options
from workers.cli_show import (
    EXIT_FAILED,
    EXIT_OK,
    days_left,
    exit_code_for,
    follow,
    print_json,
    show_dispute,
    show_list,
    show_request,
)
from workers.config import ConfigError, Settings
from workflows.models import RequestKind, Step

REQUEST_STEPS = [s.value for s in Step]
KINDS = [k.value for k in RequestKind]


def _json_option(text: str | None, option: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(f"{option}: not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: must be a JSON object")
    return value


def _identities(args: argparse.Namespace) -> dict[str, str]:
    identities = {k: v for k, v in (("email", args.email), ("user_id", args.user_id)) if v}
    if not identities:
        raise ConfigError("name the subject with --email or --user-id (or both)")
    return identities


def _details(args: argparse.Namespace) -> dict[str, Any]:
    details = _json_option(args.details, "--details")
    if args.corrections is not None:
        details["corrections"] = _json_option(args.corrections, "--corrections")
    if args.purpose is not None:
        details["purpose"] = args.purpose
    return details


async def _print_status(
    api: ApiClient, args: argparse.Namespace, status: Mapping[str, Any], path: str,
    show: Callable[[Mapping[str, Any]], None] = show_request,
) -> int:
    """Print ``status`` (after following it to its end with ``--wait``); the exit status."""
    code = EXIT_OK
    if getattr(args, "wait", False):
        try:
            status = await follow(lambda: api.call("GET", path), status, timeout=args.timeout)
        except TimeoutError as exc:
            print(f"dsr: {exc}", file=sys.stderr)
            return EXIT_FAILED
        code = exit_code_for(str(status.get("step")))
    if args.json:
        print_json(status)
    else:
        show(status)
    return code


async def request_create(settings: Settings, args: argparse.Namespace) -> int:
    """``POST /v1/requests``."""
    body: dict[str, Any] = {"kind": args.kind, "identities": _identities(args)}
    if args.tenant:
        body["tenant"] = args.tenant
    if args.unverified:
        body["verified"] = False
    if args.verified_by:
        body["verified_by"] = args.verified_by
    details = _details(args)
    if details:
        body["details"] = details
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    async with ApiClient.from_args(settings, args) as api:
        status = await api.call("POST", "/v1/requests", body=body, headers=headers)
        return await _print_status(api, args, status, f"/v1/requests/{status['id']}")


async def request_show(settings: Settings, args: argparse.Namespace) -> int:
    """``GET /v1/requests/{id}``."""
    async with ApiClient.from_args(settings, args) as api:
        path = f"/v1/requests/{args.id}"
        return await _print_status(api, args, await api.call("GET", path), path)


async def request_list(settings: Settings, args: argparse.Namespace) -> int:
    """``GET /v1/requests`` with the filters given; ``--all`` follows every page."""
    params = {k: str(v) for k, v in (
        ("tenant", args.tenant), ("kind", args.kind), ("status", args.status), ("due_before", args.due_before),
        ("due_after", args.due_after), ("page_size", args.page_size), ("page_token", args.page_token),
    ) if v is not None}
    async with ApiClient.from_args(settings, args) as api:
        answer = await api.call("GET", "/v1/requests", params=params)
        requests = list(answer.get("requests") or [])
        while args.all and answer.get("next_page_token"):
            answer = await api.call("GET", "/v1/requests", params={**params, "page_token": answer["next_page_token"]})
            requests += answer.get("requests") or []
    answer = {"requests": requests, "next_page_token": answer.get("next_page_token")}
    if args.json:
        print_json(answer)
    else:
        show_list(answer)
    return EXIT_OK


async def request_cancel(settings: Settings, args: argparse.Namespace) -> int:
    """``POST /v1/requests/{id}/cancellation``."""
    body = {"reason": args.reason} if args.reason else {}
    async with ApiClient.from_args(settings, args) as api:
        recorded = await api.call("POST", f"/v1/requests/{args.id}/cancellation", body=body)
        status = await api.call("GET", f"/v1/requests/{args.id}")
    if args.json:
        print_json({"cancellation": recorded, "status": status})
    else:
        print(f"{args.id}: cancelled by {recorded.get('actor', '?')}; step {status.get('step')}")
    return EXIT_OK


async def decide(settings: Settings, args: argparse.Namespace) -> int:
    """``POST /v1/requests/{id}/decision``; with ``--wait``, follow the request to its end."""
    if args.outcome == "reject" and not (args.reason or "").strip():
        raise ConfigError("a rejection needs --reason: the subject is told it (GDPR Art. 12(4))")
    body = {"outcome": args.outcome, "reason": args.reason or ""}
    async with ApiClient.from_args(settings, args) as api:
        recorded = await api.call("POST", f"/v1/requests/{args.id}/decision", body=body)
        if not args.wait:
            if args.json:
                print_json(recorded)
            else:
                print(f"{args.id}: {recorded.get('outcome', args.outcome)} recorded by {recorded.get('actor', '?')}")
            return EXIT_OK
        path = f"/v1/requests/{args.id}"
        return await _print_status(api, args, await api.call("GET", path), path)


async def extend(settings: Settings, args: argparse.Namespace) -> int:
    """``POST /v1/requests/{id}/extension``: once, by one or two further months (GDPR Art. 12(3))."""
    async with ApiClient.from_args(settings, args) as api:
        recorded = await api.call("POST", f"/v1/requests/{args.id}/extension",
                                  body={"months": args.months, "reason": args.reason})
        status = await api.call("GET", f"/v1/requests/{args.id}")
    if args.json:
        print_json({"extension": recorded, "status": status})
    else:
        print(f"{args.id}: extended by {args.months} month(s); due {days_left(status.get('due_at'))}")
    return EXIT_OK


async def dispute_open(settings: Settings, args: argparse.Namespace) -> int:
    """``POST /v1/disputes``."""
    body: dict[str, Any] = {"identities": _identities(args), "grounds": args.grounds,
                            "requested_kind": args.requested_kind}
    details = _details(args)
    if details:
        body["details"] = details
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    async with ApiClient.from_args(settings, args) as api:
        status = await api.call("POST", "/v1/disputes", body=body, headers=headers)
    print_json(status) if args.json else show_dispute(status)
    return EXIT_OK


async def dispute_show(settings: Settings, args: argparse.Namespace) -> int:
    """``GET /v1/disputes/{id}``."""
    async with ApiClient.from_args(settings, args) as api:
        status = await api.call("GET", f"/v1/disputes/{args.id}")
    print_json(status) if args.json else show_dispute(status)
    return EXIT_OK


async def dispute_resolve(settings: Settings, args: argparse.Namespace) -> int:
    """``POST /v1/disputes/{id}/resolution``."""
    async with ApiClient.from_args(settings, args) as api:
        status = await api.call("POST", f"/v1/disputes/{args.id}/resolution",
                                body={"outcome": args.outcome, "reason": args.reason})
    print_json(status) if args.json else show_dispute(status)
    return EXIT_OK


def _subject_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--email", default=None, help="the subject's email address")
    p.add_argument("--user-id", default=None, help="the subject's user id")
    p.add_argument("--details", metavar="JSON", default=None,
                   help='details as a JSON object, e.g. \'{"purpose": "marketing"}\'')
    p.add_argument("--corrections", metavar="JSON", default=None,
                   help='rectification: corrected values by data category, e.g. \'{"user.name": "Jane Roe"}\'')
    p.add_argument("--purpose", default=None, help="objection, opt-out, consent withdrawal: the purpose to stop")
    p.add_argument("--idempotency-key", metavar="KEY", default=None,
                   help="send the same key again to get the same request back instead of a second one")


def _wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the request until it ends, showing each step")
    p.add_argument("--timeout", type=float, metavar="SECONDS", default=None,
                   help="with --wait: give up (exit 1) after this long")


def _command(sub: Any, name: str, run: Callable[..., Any], help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_api_options(p)
    p.set_defaults(run=run)
    return p


def add_parsers(sub: Any) -> None:
    """Register ``request``, ``decide``, ``extend`` and ``dispute`` on the ``dsr`` parser's subcommands."""
    requests = sub.add_parser("request", help="data subject requests, through the HTTP API ($DSR_API_TOKEN)")
    actions = requests.add_subparsers(dest="request_command", metavar="ACTION", required=True)

    p = _command(actions, "create", request_create, "submit a request (portal token)")
    p.add_argument("kind", choices=KINDS, help="what the subject asks for")
    p.add_argument("--tenant", default=None, help="the tenant (must be the token's)")
    p.add_argument("--unverified", action="store_true",
                   help="the subject's identity is not verified yet: the request waits for verification")
    p.add_argument("--verified-by", metavar="METHOD", default=None, help="how identity was verified")
    _subject_options(p)
    _wait_options(p)

    p = _command(actions, "show", request_show, "a request's status")
    p.add_argument("id")
    _wait_options(p)

    p = _command(actions, "list", request_list, "requests, filtered, newest first")
    p.add_argument("--tenant", default=None)
    p.add_argument("--kind", choices=KINDS, default=None)
    p.add_argument("--status", choices=REQUEST_STEPS, default=None, help="the step a request is at")
    p.add_argument("--due-before", metavar="DATE", default=None, help="ISO 8601 date or time")
    p.add_argument("--due-after", metavar="DATE", default=None, help="ISO 8601 date or time")
    p.add_argument("--page-size", type=int, default=None)
    p.add_argument("--page-token", default=None)
    p.add_argument("--all", action="store_true", help="follow every page")

    p = _command(actions, "cancel", request_cancel, "withdraw a request before it runs")
    p.add_argument("id")
    p.add_argument("--reason", default=None)

    p = _command(sub, "decide", decide, "approve or reject a request waiting for approval (admin token)")
    p.add_argument("id")
    p.add_argument("outcome", choices=["approve", "reject"])
    p.add_argument("--reason", default=None, help="required for a rejection: the subject is told it")
    _wait_options(p)

    p = _command(sub, "extend", extend, "extend a request's deadline once, by 1 or 2 months (GDPR Art. 12(3))")
    p.add_argument("id")
    p.add_argument("--months", type=int, choices=[1, 2], required=True)
    p.add_argument("--reason", required=True, help="why; the subject is told")

    disputes = sub.add_parser("dispute", help="disputes (GDPR Art. 18(1)): processing restricted meanwhile")
    actions = disputes.add_subparsers(dest="dispute_command", metavar="ACTION", required=True)
    p = _command(actions, "open", dispute_open, "open a dispute: restrict the subject's processing (admin token)")
    p.add_argument("--grounds", required=True, help="what the subject disputes (stays encrypted)")
    p.add_argument("--requested-kind", choices=KINDS, default="erasure",
                   help="what the subject asked for; it proceeds if they prevail (default: erasure)")
    _subject_options(p)
    p = _command(actions, "show", dispute_show, "a dispute's status")
    p.add_argument("id")
    p = _command(actions, "resolve", dispute_resolve, "resolve a dispute")
    p.add_argument("id")
    p.add_argument("outcome", choices=["subject_prevails", "company_prevails"])
    p.add_argument("--reason", required=True)
