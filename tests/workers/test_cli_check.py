"""``dsr config check``: one line per system, exit 0 / 1 (unreachable) / 2 (configuration refused)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.conftest import FIDES_DATASET, tool


def config(tmp_path: Path, temporal_address: str, systems: dict[str, dict[str, str]]) -> Path:
    """A TOML file with Temporal's address and ``systems``."""
    lines = ['state_dir = "state"', "[temporal]", f'address = "{temporal_address}"']
    for name, options in systems.items():
        lines.append(f"[systems.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    path = tmp_path / "dsr.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def check(path: Path, database_url: str, *extra: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DSR_CONFIG", "DATABASE_URL")}
    env["DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        tool("dsr"), "--config", str(path), "config", "check", *extra, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def rows(out: str) -> dict[str, list[str]]:
    """The table's rows by system name: [type, status, detail]."""
    [header, *body] = out.strip().splitlines()
    assert header.split()[:3] == ["SYSTEM", "TYPE", "STATUS"]
    return {line.split()[0]: line.split(None, 3)[1:] for line in body}


async def test_config_check_reaches_every_system(temporal_env, fides_db, orchestrator_db, tmp_path):
    address = temporal_env.client.service_client.config.target_host
    appdb = {"type": "postgres", "dsn": fides_db, "dataset": str(FIDES_DATASET)}
    good = config(tmp_path, address, {"appdb": appdb})

    code, out, err = await check(good, orchestrator_db)
    assert code == 0, (out, err)
    table = rows(out)
    assert list(table) == ["temporal", "database", "codec", "appdb"]
    assert all(status == "ok" for _, status, _ in table.values()), out
    assert "namespace default" in table["temporal"][2]
    assert table["appdb"][0] == "postgres" and "erase" in table["appdb"][2]

    # A system that does not answer: its line says so, the others are still checked; exit 1.
    gone = {**appdb, "dsn": "postgresql://dsr@127.0.0.1:9/nothing"}
    code, out, err = await check(config(tmp_path, address, {"gone": gone, "appdb": appdb}), orchestrator_db)
    assert code == 1, (out, err)
    table = rows(out)
    assert table["gone"][1] == "error" and table["appdb"][1] == "ok"
    assert "Traceback" not in err and err.strip() == "dsr: some systems cannot be reached (see above)"

    # Options the connector refuses, or an unknown type: exit 2; the unreachable database too is named.
    broken = config(tmp_path, address, {"odd": {"type": "teleport"}, "nodataset": {"type": "postgres",
                                                                                 "dsn": fides_db}})
    code, out, err = await check(broken, "postgresql://dsr@127.0.0.1:9/nothing", "--json")
    assert code == 2, (out, err)
    report = json.loads(out)
    by_name = {s["name"]: s for s in report["systems"]}
    assert report["ok"] is False
    assert by_name["temporal"]["ok"] and by_name["codec"]["ok"]
    assert not by_name["database"]["ok"] and not by_name["database"]["config_error"]
    assert not by_name["odd"]["ok"] and "unknown connector type" in by_name["odd"]["detail"]
    assert not by_name["nodataset"]["ok"] and by_name["nodataset"]["config_error"]
    assert all("\n" not in s["detail"] for s in report["systems"])
