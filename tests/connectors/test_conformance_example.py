"""The conformance kit on the example connector of connectors/README.md.

The example is registered the way an integration team's package is: an entry point in the
group ``dsr.connectors``, here from a ``.dist-info`` folder the test puts on ``sys.path``
(what installing a package with ``[project.entry-points."dsr.connectors"]`` leaves behind).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from connectors.conformance import ConnectorConformance
from connectors.contract import Subject
from connectors.registry import connector_class
from tests.connectors import example_connector
from tests.connectors.example_connector import NewsletterConnector

README = Path(__file__).resolve().parents[2] / "connectors" / "README.md"


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution whose entry point names the example connector."""
    site = tmp_path / "site"
    dist = site / "dsr_newsletter-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dsr-newsletter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[dsr.connectors]\nnewsletter = tests.connectors.example_connector:NewsletterConnector\n")
    monkeypatch.syspath_prepend(str(site))


class TestNewsletterConformance(ConnectorConformance):
    connector_type = "newsletter"

    @pytest_asyncio.fixture
    async def connector_options(self, registered: None, tmp_path: Path) -> dict[str, Any]:
        path = tmp_path / "newsletter.json"
        path.write_text(json.dumps({"subscribers": [
            {"email": "jane@example.com", "name": "Jane", "topics": ["releases", "events"]},
            {"email": "john@example.com", "name": "John", "topics": ["releases"]},
        ]}))
        return {"path": str(path)}

    @pytest_asyncio.fixture
    async def seeded_subject(self) -> Subject:
        return Subject(request_id="conformance", identities={"email": "Jane@Example.com"})

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        return Subject(request_id="conformance", identities={"email": "nobody@example.com"})

    @pytest_asyncio.fixture
    async def bad_options(self, registered: None, tmp_path: Path) -> list[dict[str, Any]]:
        return [{}, {"path": str(tmp_path / "missing.json")}, {"path": ["not", "a", "path"]}]


def test_the_entry_point_is_what_the_registry_loads(registered: None) -> None:
    assert connector_class("newsletter") is NewsletterConnector


def test_the_readme_shows_the_example_as_it_is_tested() -> None:
    """The guide's code block is this module, character for character."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    source = Path(example_connector.__file__).read_text()
    assert source in blocks


SLOPPY = '''
import pytest_asyncio

from connectors.conformance import ConnectorConformance
from connectors.contract import ActionOutcome, ConnectorError, ExportOutcome, Subject
from tests.connectors.example_connector import NewsletterConnector, NewsletterOptions


class Sloppy(NewsletterConnector):
    """Three classic mistakes."""

    async def export(self, subject, sink):
        rows = await self._mine(subject)
        async with sink.collection("subscribers", ["email", "topics"]) as writer:
            for row in rows:
                await writer.write({"email": row["email"], "topics": tuple(row["topics"])})  # not plain JSON
        return ExportOutcome(exported={"subscribers": len(rows)})

    async def erase(self, subject, plan, progress):
        if await plan.has_plan():
            raise ConnectorError("nothing left to erase")  # a re-run fails
        return await super().erase(subject, plan, progress)

    async def deactivate(self, subject):
        return ActionOutcome()  # not declared, yet answers


class TestSloppy(ConnectorConformance):
    connector_type = "newsletter"

    @pytest_asyncio.fixture
    async def connector(self, tmp_path):
        path = tmp_path / "list.json"
        path.write_text('{"subscribers": [{"email": "jane@example.com", "name": "Jane", "topics": ["a"]}]}')
        connector = Sloppy("sloppy", NewsletterOptions(path=path))
        await connector.open()
        yield connector

    @pytest_asyncio.fixture
    async def seeded_subject(self):
        return Subject(request_id="r", identities={"email": "jane@example.com"})

    @pytest_asyncio.fixture
    async def absent_subject(self):
        return Subject(request_id="r", identities={"email": "nobody@example.com"})
'''


def test_the_kit_catches_a_sloppy_connector_in_strict_mode(tmp_path: Path) -> None:
    """Run the kit in a separate pytest (pytest-asyncio's strict mode, no conftest) on a broken connector."""
    (tmp_path / "test_sloppy.py").write_text(SLOPPY)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-W", "ignore", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    results = {test: outcome for outcome, test in re.findall(r"^(PASSED|FAILED|ERROR) \S*::TestSloppy::(\w+)",
                                                               run.stdout, re.M)}
    assert results == {
        "test_declares_what_it_is": "PASSED",
        "test_locate": "PASSED",
        "test_export": "FAILED",
        "test_erasure_is_verified": "PASSED",
        "test_erasure_twice_is_harmless": "FAILED",
        "test_undeclared_capabilities_are_refused": "FAILED",
    }, run.stdout[-3000:]
    assert "is not plain JSON" in run.stdout and "DID NOT RAISE" in run.stdout


def test_the_contract_package_does_not_pull_in_pytest() -> None:
    """Workflows import ``connectors``; the kit (and pytest) must stay out of it."""
    code = "import sys, connectors, connectors.registry; assert 'pytest' not in sys.modules, 'pytest imported'"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True, timeout=60)
