"""The repository's shape, as the product's design card fixes it."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_top_level_layout():
    for name in ("pyproject.toml", "Makefile", "README.md", "docker-compose.yml", "Dockerfile"):
        assert (REPO / name).is_file(), name
    for name in ("workflows", "activities", "connectors", "workers", "api", "tests"):
        assert (REPO / name).is_dir(), name
    for package in ("workflows", "activities", "connectors", "workers", "api"):
        assert (REPO / package / "__init__.py").is_file(), package


def test_readme_opens_with_the_two_commands():
    lines = [ln.strip() for ln in (REPO / "README.md").read_text().splitlines() if ln.strip()]
    assert lines[0].startswith("```")
    assert lines[1:3] == ["make demo", "make test"]
    assert lines[3] == "```"


def test_makefile_has_the_targets():
    text = (REPO / "Makefile").read_text()
    for target in ("demo", "test", "lint", "bench", "clean"):
        assert f"\n{target}:" in text, target
    assert ".venv/.installed: pyproject.toml" in text.replace("$(VENV)", ".venv")


def test_ci_runs_make_test():
    run = REPO / ".ci" / "run"
    text = run.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert "make test" in text
    assert os.access(run, os.X_OK)


def test_one_distribution_with_the_dsr_console_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["dsr"] == "workers.cli:main"
    assert "test" in project["optional-dependencies"]


def test_a_non_editable_install_ships_every_module_and_data_file():
    """The image runs ``pip install .`` (Dockerfile): every folder of Python code must be a package it installs.

    ``connectors.partners`` once was not, so the image had no partner connectors while editable installs did.
    """
    from setuptools import find_namespace_packages

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_namespace_packages(str(REPO), include=find["include"], exclude=find.get("exclude", [])))
    code = {str(d.relative_to(REPO)).replace(os.sep, ".")
            for top in ("workflows", "activities", "connectors", "workers", "api")
            for d in [REPO / top, *(REPO / top).rglob("*")]
            if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))}
    assert code <= shipped, f"not installed by pip install .: {sorted(code - shipped)}"
    assert not {name for name in shipped if "__pycache__" in name or name.startswith("tests")}
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any((REPO / "api").glob(data["api"][0])) and any((REPO / "workers").glob(data["workers"][0]))


def test_demo_configuration_is_valid():
    from workers.config import load_settings

    settings = load_settings(REPO / "workers" / "demo" / "dsr.demo.toml")
    assert settings.state_dir.resolve() == (REPO / ".dsr").resolve()
    assert "appdb" in settings.systems and settings.systems["appdb"].type == "postgres"
    assert {t.role for t in settings.api.tokens} == {"portal", "admin"}
