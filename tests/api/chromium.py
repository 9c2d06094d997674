"""Debian's ``chromium`` for the browser tests: installed with apt-get when missing, as slapd is for LDAP."""

from __future__ import annotations

from pathlib import Path

from tests.debian import ensure_debian_packages

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
"""Flags for a headless Chromium that talks to nothing but the page under test."""


def ensure_chromium() -> str | None:
    """Install Debian's ``chromium`` when ``/usr/bin/chromium`` is missing (never a downloaded browser).

    Returns:
        None when Chromium is there, else why it could not be installed (for ``pytest.skip``).
    """
    return ensure_debian_packages(CHROMIUM, ["chromium"])
