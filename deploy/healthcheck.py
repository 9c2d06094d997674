"""Health check of the worker and API image (the Dockerfile's HEALTHCHECK and the compose file's).

``python /opt/dsr/healthcheck.py`` finds the container's ``dsr`` process (process 1, or its child under an
init such as ``docker run --init``): for ``dsr api`` it asks the API's ``/healthz`` (``--ready``: ``/readyz``,
which also needs Temporal to answer) on its configured port; for ``dsr worker``, which has no HTTP port,
it checks that the worker process is alive and not a zombie. Exit status 0 healthy, 1 not.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PROC_ROOT = Path("/proc")


def command_of(proc: Path) -> list[str]:
    """The argument vector of the process at ``proc`` (empty when it is gone)."""
    try:
        raw = (proc / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_running(proc: Path) -> bool:
    """Whether the process at ``proc`` exists and is not a zombie or dead."""
    try:
        status = (proc / "status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("State:"):
            return line.split()[1] not in ("Z", "X")
    return False


def dsr_command(argv: Sequence[str]) -> str | None:
    """``worker`` or ``api`` when ``argv`` runs that ``dsr`` subcommand, else None."""
    if not argv or not any(Path(a).name == "dsr" or a.endswith("workers.cli") for a in argv[:3]):
        return None
    for arg in argv[1:]:
        if arg in ("worker", "api"):
            return arg
    return None


def find_dsr(proc_root: Path = PROC_ROOT) -> tuple[str, Path] | None:
    """The first running ``dsr worker`` or ``dsr api`` under ``proc_root`` (lowest pid first), or None."""
    pids = sorted(int(p.name) for p in proc_root.iterdir() if p.name.isdigit())
    for pid in pids:
        proc = proc_root / str(pid)
        what = dsr_command(command_of(proc))
        if what is not None and is_running(proc):
            return what, proc
    return None


def http_ok(host: str, port: int, path: str, timeout: float = 3.0) -> bool:
    """Whether ``GET http://host:port/path`` answers 200."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def api_port() -> int:
    """The API's port: ``DSR_API__PORT``, else the configuration file's, else 8080."""
    if os.environ.get("DSR_API__PORT"):
        return int(os.environ["DSR_API__PORT"])
    try:
        from workers.config import load_settings

        return load_settings().api.port
    except Exception:  # an unreadable configuration: the API could not have started on another port
        return 8080


def check(ready: bool = False, proc_root: Path = PROC_ROOT) -> tuple[bool, str]:
    """The verdict and one line saying why."""
    found = find_dsr(proc_root)
    if found is None:
        return False, "no running `dsr worker` or `dsr api` process"
    what, proc = found
    if what == "worker":
        return True, f"worker running (pid {proc.name})"
    path = "/readyz" if ready else "/healthz"
    port = api_port()
    if http_ok("127.0.0.1", port, path):
        return True, f"api answers {path}"
    return False, f"api does not answer {path} on port {port}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print the verdict, exit 0 when healthy."""
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.splitlines()[0])
    parser.add_argument("--ready", action="store_true", help="for the API: /readyz instead of /healthz")
    args = parser.parse_args(argv)
    ok, why = check(ready=args.ready)
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
