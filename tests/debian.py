"""Installing a Debian package the tests need (slapd, chromium) when it is missing, as CI and a fresh machine need.

Only with root and apt-get; otherwise the caller skips with the reason returned.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def _apt_get(*args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """Run apt-get without prompts or standard input (as CI runs it), waiting for the dpkg lock."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)


def ensure_debian_packages(binary: Path, packages: Sequence[str], *, timeout: int = 1200) -> str | None:
    """Install ``packages`` when ``binary`` is missing (an update of the package lists first if needed).

    Returns:
        None when ``binary`` is there, else why it could not be installed (for ``pytest.skip``).
    """
    if binary.exists():
        return None
    name, wanted = packages[0], " ".join(packages)
    if not shutil.which("apt-get"):
        return f"{name} is not installed and this machine has no apt-get to install it"
    if os.geteuid() != 0:
        return f"{name} is not installed and installing it needs root (apt-get install {wanted})"
    install = ("install", "-y", "--no-install-recommends", *packages)
    try:
        result = _apt_get(*install, timeout=timeout)
        if result.returncode != 0:
            _apt_get("update", timeout=timeout)
            result = _apt_get(*install, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{name} could not be installed: {type(exc).__name__}"
    if result.returncode != 0 or not binary.exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{name} could not be installed with apt-get (exit {result.returncode}): {last}"
    return None
