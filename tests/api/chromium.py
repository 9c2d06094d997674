"""Debian's ``chromium`` for the browser tests: installed with apt-get when missing, as slapd is for LDAP."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
"""Flags for a headless Chromium that talks to nothing but the page under test."""


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    """Run apt-get without prompts or standard input, waiting for the dpkg lock."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=1200, check=False)


def ensure_chromium() -> str | None:
    """Install Debian's ``chromium`` when ``/usr/bin/chromium`` is missing (never a downloaded browser).

    Returns:
        None when Chromium is there, else why it could not be installed (for ``pytest.skip``).
    """
    if CHROMIUM.exists():
        return None
    if not shutil.which("apt-get"):
        return "chromium is not installed and this machine has no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is not installed and installing it needs root (apt-get install chromium)"
    install = ("install", "-y", "--no-install-recommends", "chromium")
    try:
        result = _apt_get(*install)
        if result.returncode != 0:
            _apt_get("update")
            result = _apt_get(*install)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"chromium could not be installed: {type(exc).__name__}"
    if result.returncode != 0 or not CHROMIUM.exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"chromium could not be installed with apt-get (exit {result.returncode}): {last}"
    return None
