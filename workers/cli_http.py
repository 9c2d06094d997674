"""The HTTP API as the ``dsr`` CLI's request, decide, extend and dispute commands use it.

Base URL: ``--api-url``, else ``DSR_API_URL``, else the configuration's ``api.public_url``. Token:
``DSR_API_TOKEN`` only, never a flag (flags show in ``ps`` and in shell history).

A problem document (RFC 9457) answered by the API becomes :class:`ApiError` with one line for the
operator: exit status 2 for a 4xx (the input was refused), 1 for a 5xx or an API that does not answer.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp

from workers.config import ConfigError, Settings

TOKEN_ENV = "DSR_API_TOKEN"
URL_ENV = "DSR_API_URL"
TIMEOUT_SECONDS = 30.0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ApiError(Exception):
    """The API refused the call or could not serve it; the message is one line.

    Attributes:
        status: The HTTP status (0 when the API did not answer).
        exit_code: 2 for a 4xx, else 1.
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = EXIT_USAGE if 400 <= status < 500 else EXIT_FAILED


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """The options every API command takes: ``--api-url`` and ``--json``."""
    parser.add_argument("--api-url", metavar="URL", default=None,
                        help=f"the API's base URL (default: ${URL_ENV}, else the configuration's api.public_url)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON (for scripts)")


def api_base_url(settings: Settings, args: argparse.Namespace) -> str:
    """``--api-url``, else ``DSR_API_URL``, else ``api.public_url``, without a trailing slash."""
    url = getattr(args, "api_url", None) or os.environ.get(URL_ENV) or settings.api.public_url
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the API URL must start with http:// or https://, not {url!r}")
    return url.rstrip("/")


def api_token() -> str:
    """The bearer token from ``DSR_API_TOKEN``; a :class:`ConfigError` (exit 2) when it is not set."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"set {TOKEN_ENV} to your API token (it is never taken from a flag)")
    return token


def problem_line(status: int, body: Any) -> str:
    """One line for a problem document: ``<title>: <detail>`` and, for a 422, where the body is invalid."""
    if not isinstance(body, Mapping):
        return f"the API answered HTTP {status}"
    title = str(body.get("title") or f"HTTP {status}")
    detail = str(body.get("detail") or "").strip()
    line = f"{title}: {detail}" if detail else title
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for err in errors[:3]:
            if isinstance(err, Mapping):
                where = str(err.get("pointer") or "").removeprefix("#").lstrip("/")
                what = str(err.get("detail") or err.get("msg") or "").removeprefix("Value error, ")
                if what and what in line:
                    continue
                parts.append(f"{where}: {what}" if where else what)
        if parts:
            line += " (" + "; ".join(parts) + ")"
    return " ".join(line.split())


class ApiClient:
    """An HTTP session on the API with the caller's token; use it as ``async with``.

    Args:
        base_url: The API's base URL.
        token: The bearer token.
    """

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_args(cls, settings: Settings, args: argparse.Namespace) -> ApiClient:
        """The client for the URL and token the command line and the environment name."""
        return cls(api_base_url(settings, args), api_token())

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one call and answer its JSON body.

        Raises:
            ApiError: The API answered an error (its problem's title and detail), or did not answer.
        """
        assert self._session is not None, "use ApiClient as `async with`"
        url = self.base_url + path
        try:
            async with self._session.request(
                method, url, json=body, params=params, headers={**self._headers, **(headers or {})}
            ) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientError as exc:
            raise ApiError(f"cannot reach the API at {self.base_url}: {type(exc).__name__}") from None
        except TimeoutError:
            raise ApiError(f"the API at {self.base_url} did not answer within {TIMEOUT_SECONDS:.0f}s") from None
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        if status >= 400:
            raise ApiError(problem_line(status, data), status)
        if data is None and text:
            raise ApiError(f"the API answered HTTP {status} with a body that is not JSON", 500)
        return data
