"""The conformance kit: a pytest class an integration team subclasses to prove its connector.

Needs pytest and pytest-asyncio (the ``[test]`` extra); nothing else in the package imports
this module, so they stay test-time dependencies. Subclass :class:`ConnectorConformance` in
a test module, set ``connector_type`` and give the fixtures below; every test method of the
kit then runs against your system::

    import pytest_asyncio
    from connectors.conformance import ConnectorConformance
    from connectors.contract import Subject


    class TestMyConnector(ConnectorConformance):
        connector_type = "my_system"          # the name it is registered under

        @pytest_asyncio.fixture
        async def connector_options(self, my_system_url):
            return {"url": my_system_url, "token_env": "MY_SYSTEM_TOKEN"}

        @pytest_asyncio.fixture
        async def seeded_subject(self, my_system_url):
            await create_user(my_system_url, "jane@example.com")   # your own seeding
            return Subject(request_id="conformance", identities={"email": "jane@example.com"})

        @pytest_asyncio.fixture
        async def absent_subject(self):
            return Subject(request_id="conformance", identities={"email": "nobody@example.com"})

        @pytest_asyncio.fixture
        async def bad_options(self, my_system_url):
            return [{"url": "not a url", "token_env": "MY_SYSTEM_TOKEN"}, {"url": my_system_url}]

Fixtures (function scope; async fixtures with ``pytest_asyncio.fixture``, which also works
in pytest-asyncio's strict mode):

- ``connector_options``: the options of a ``[systems.<name>]`` table (without ``type``) that
  work against the test system. The kit's default ``connector`` fixture builds from them;
  without them (None, the default) the round-trip test skips.
- ``connector``: a built, opened connector, closed after the test. Default: built with
  :func:`connectors.registry.build_connector` from ``connector_type`` and ``connector_options``.
  Override it to build another way; the round-trip test still needs ``connector_options``.
- ``seeded_subject``: a :class:`~connectors.contract.Subject` that exists in the system with
  some data, seeded afresh for each test (erasure tests destroy it).
- ``absent_subject``: a Subject the system holds nothing of (with ``may_hold_anyone``: one that was
  never seeded; the system may still report it).
- ``bad_options`` (optional): option sets that must fail with ConfigurationError, in
  ``from_options`` or at ``open``. Default: none besides the kit's own (an unknown option).

Class attributes besides ``connector_type``:

- ``may_hold_anyone`` (default False): set True for a system that cannot tell subjects apart and
  "may hold" anyone (a backup store: every backup may hold anyone's data). The absent subject is then
  not required to be located nowhere: ``locate`` and ``export`` must answer for it just as for the
  seeded subject, and its erasure must verify clean (it may change something).

Hooks (override when the default does not fit):

- :meth:`ConnectorConformance.observe`: what "the subject's data" looks like, compared to
  prove that lifting a restriction restores it and that a second erasure changes nothing.
  Default: the ``locate`` counts and (with export) the exported rows. Override when the
  system stamps modification times into what it exports, or to look at more (the database
  itself, say).
- :meth:`ConnectorConformance.complete_erasure`: for a connector whose ``erase`` returns
  ``completes_at`` (backups), make that time come in the test system before verification.
- :meth:`ConnectorConformance.complete_external`: for a connector whose ``erase`` returns ``external``
  (a partner that completes later, on its own), make the partner complete the request in the test
  system before verification.

What the kit proves, each a test method (a capability the connector does not declare skips
the test that exercises it; the undeclared-capability test then checks it is refused):

- ``test_declares_what_it_is``: a type name, the LOCATE capability, only known capabilities.
- ``test_locate``: the seeded subject is found with positive counts, the absent one not at all
  (with ``may_hold_anyone``: the absent one is found exactly as the seeded one).
- ``test_export``: at least one collection with rows in a :class:`~connectors.testing.MemorySink`,
  every value plain JSON (str, int, float, bool, None, lists and objects of them), the
  outcome's counts equal to the rows written; nothing for the absent subject (with
  ``may_hold_anyone``: the same counts as for the seeded subject).
- ``test_erasure_is_verified``: ``erase`` with a :class:`~connectors.testing.MemoryPlanStore`
  (plans must be JSON) reports something done (deleted, masked, retained, or an external wait),
  then ``verify_erasure`` reports nothing remaining; erasing the absent subject deletes and masks
  nothing (unless ``may_hold_anyone``) and verifies clean.
- ``test_erasure_twice_is_harmless``: a second run on the same plan, and a third after the
  record of applied items is lost (a crash between applying and recording), raise nothing
  and change nothing: the same verification, ``locate`` counts and :meth:`observe` (taken in
  that order, after the erasure completed: verification may finish it, e.g. delete expired backups).
- ``test_restriction_and_lifting``: ``restrict`` changes something and is repeatable;
  ``lift_restriction`` changes something and restores :meth:`observe`; lifting twice is harmless;
  nothing changes for the absent subject.
- ``test_deactivation``: ``deactivate`` changes something, deletes nothing (``locate`` counts
  unchanged) and is repeatable.
- ``test_undeclared_capabilities_are_refused``: each capability not declared raises
  :class:`~connectors.contract.UnsupportedError` (not retryable).
- ``test_bad_options_fail_clearly``: every bad option set, and the good options plus an
  unknown key, raise :class:`~connectors.contract.ConfigurationError` with one non-empty line.
- ``test_from_options_round_trip``: ``build_connector(name, connector_type, options)`` gives
  the same class, named as asked, with ``type_name == connector_type`` and, once opened, the
  same capabilities and the same ``locate`` answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from connectors.contract import (
    Capability,
    ConfigurationError,
    Connector,
    ErasureOutcome,
    Subject,
    UnsupportedError,
)
from connectors.registry import build_connector
from connectors.testing import MemoryPlanStore, MemorySink

SYSTEM_NAME = "conformance"
"""The system name the kit builds connectors under."""
REFERENCE = "conformance-restriction"


def _no_progress(_: Mapping[str, Any]) -> None:
    """A progress reporter that ignores progress."""


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is made of JSON's own types only (no tuples, dates, decimals, bytes)."""
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


def _undeclared_calls(connector: Connector, subject: Subject) -> dict[Capability, list[Callable[[], Awaitable]]]:
    """The calls each capability stands for."""
    return {
        Capability.EXPORT: [lambda: connector.export(subject, MemorySink())],
        Capability.ERASE: [lambda: connector.erase(subject, MemoryPlanStore(), _no_progress),
                           lambda: connector.verify_erasure(subject, MemoryPlanStore())],
        Capability.RECTIFY: [lambda: connector.rectify(subject, {"user.name": "Conformance"})],
        Capability.RESTRICT: [lambda: connector.restrict(subject, REFERENCE),
                              lambda: connector.lift_restriction(subject, REFERENCE)],
        Capability.STOP_PROCESSING: [lambda: connector.stop_processing(subject, "marketing")],
        Capability.DEACTIVATE: [lambda: connector.deactivate(subject)],
    }


class ConnectorConformance:
    """Subclass in a test module (named ``Test...``) to run the conformance tests on a connector.

    See the module docstring for the fixtures to give and what each test proves.
    """

    connector_type: ClassVar[str] = ""
    """The type name the connector is registered under (built-in or ``dsr.connectors`` entry point)."""

    may_hold_anyone: ClassVar[bool] = False
    """True when the system cannot tell subjects apart and may hold anyone (backups): see the module docstring."""

    # ---- fixtures a subclass gives ----------------------------------------------------------

    @pytest_asyncio.fixture
    async def connector_options(self) -> Mapping[str, Any] | None:
        """Options that work against the test system; override (None: the tests that need them skip)."""
        return None

    @pytest_asyncio.fixture
    async def connector(self, connector_options: Mapping[str, Any] | None) -> AsyncIterator[Connector]:
        """A connector built from ``connector_options`` through the registry, opened, closed afterwards."""
        if connector_options is None:
            pytest.fail(f"{type(self).__name__} must give a connector_options or a connector fixture")
        connector = build_connector(SYSTEM_NAME, self._type(), connector_options)
        await connector.open()
        try:
            yield connector
        finally:
            await connector.close()

    @pytest_asyncio.fixture
    async def seeded_subject(self) -> Subject:
        """A subject the system holds data of; override."""
        pytest.fail(f"{type(self).__name__} must give a seeded_subject fixture")

    @pytest_asyncio.fixture
    async def absent_subject(self) -> Subject:
        """A subject the system holds nothing of; override."""
        pytest.fail(f"{type(self).__name__} must give an absent_subject fixture")

    @pytest_asyncio.fixture
    async def bad_options(self) -> list[Mapping[str, Any]]:
        """Option sets that must fail with ConfigurationError; override to add yours."""
        return []

    # ---- hooks ------------------------------------------------------------------------------

    async def observe(self, connector: Connector, subject: Subject) -> Any:
        """What the subject's data looks like now: ``locate`` counts and, with export, the exported rows."""
        seen: dict[str, Any] = {"located": (await connector.locate(subject)).found}
        if Capability.EXPORT in connector.capabilities:
            sink = MemorySink()
            await connector.export(subject, sink)
            seen["exported"] = sink.rows
        return seen

    async def complete_erasure(self, connector: Connector, subject: Subject, outcome: ErasureOutcome) -> None:
        """Make ``outcome.completes_at`` come in the test system; override for connectors that return it."""
        pytest.fail(f"erase returned completes_at={outcome.completes_at}: override complete_erasure to make that "
                    "time come in the test system before verification")

    async def complete_external(self, connector: Connector, subject: Subject, outcome: ErasureOutcome) -> None:
        """Make the partner complete ``outcome.external``; override for connectors that return it."""
        reference = outcome.external.reference if outcome.external is not None else None
        pytest.fail(f"erase returned external (reference {reference}): override complete_external to make the "
                    "partner complete the request in the test system before verification")

    # ---- helpers ----------------------------------------------------------------------------

    def _type(self) -> str:
        if not self.connector_type:
            pytest.fail(f"{type(self).__name__} must set connector_type (the name it is registered under)")
        return self.connector_type

    @staticmethod
    def _require(connector: Connector, capability: Capability) -> None:
        if capability not in connector.capabilities:
            pytest.skip(f"{connector.type_name} does not declare {capability.value}")

    async def _erase(self, connector: Connector, subject: Subject, plan: MemoryPlanStore) -> ErasureOutcome:
        outcome = await connector.erase(subject, plan, _no_progress)
        assert isinstance(outcome, ErasureOutcome)
        if outcome.completes_at is not None:
            await self.complete_erasure(connector, subject, outcome)
        if outcome.external is not None:
            await self.complete_external(connector, subject, outcome)
        return outcome

    async def _after_erasure(self, connector: Connector, subject: Subject, plan: MemoryPlanStore) -> tuple:
        """Verification, then ``locate`` counts and :meth:`observe` (verifying may finish the erasure)."""
        verification = await connector.verify_erasure(subject, plan)
        return (
            (await connector.locate(subject)).found,
            verification,
            await self.observe(connector, subject),
        )

    # ---- the tests --------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_declares_what_it_is(self, connector: Connector) -> None:
        """A type name, the LOCATE capability, and only capabilities of the contract."""
        assert connector.type_name, "set type_name on the connector class"
        assert Capability.LOCATE in connector.capabilities
        assert all(isinstance(c, Capability) for c in connector.capabilities)

    @pytest.mark.asyncio
    async def test_locate(self, connector: Connector, seeded_subject: Subject, absent_subject: Subject) -> None:
        """The seeded subject is found (positive counts), the absent one not at all (or, may hold anyone, alike)."""
        found = (await connector.locate(seeded_subject)).found
        assert found, "locate found nothing for the seeded subject"
        assert all(isinstance(n, int) and n > 0 for n in found.values()), found
        if self.may_hold_anyone:  # it cannot tell subjects apart: the same answer for anyone
            assert (await connector.locate(absent_subject)).found == found
        else:
            assert (await connector.locate(absent_subject)).found == {}

    @pytest.mark.asyncio
    async def test_export(self, connector: Connector, seeded_subject: Subject, absent_subject: Subject) -> None:
        """Rows in at least one collection, plain JSON only, counted as written; nothing for the absent subject."""
        self._require(connector, Capability.EXPORT)
        sink = MemorySink()
        outcome = await connector.export(seeded_subject, sink)
        assert any(sink.counts.values()), "export wrote no row for the seeded subject"
        assert {c: n for c, n in outcome.exported.items() if n} == {c: n for c, n in sink.counts.items() if n}
        for collection, rows in sink.rows.items():
            for row in rows:
                assert _plain_json(row), f"{collection}: a value is not plain JSON: {sorted(row)}"
                assert json.loads(json.dumps(row)) == row
        empty = MemorySink()
        absent = await connector.export(absent_subject, empty)
        if self.may_hold_anyone:  # the same rows for anyone
            assert {c: n for c, n in absent.exported.items() if n} == {c: n for c, n in outcome.exported.items() if n}
            assert {c: n for c, n in empty.counts.items() if n} == {c: n for c, n in sink.counts.items() if n}
        else:
            assert not any(empty.counts.values()) and not any(absent.exported.values())

    @pytest.mark.asyncio
    async def test_erasure_is_verified(
        self, connector: Connector, seeded_subject: Subject, absent_subject: Subject
    ) -> None:
        """After erase, verify_erasure reports nothing remaining; the absent subject's erasure changes nothing."""
        self._require(connector, Capability.ERASE)
        plan = MemoryPlanStore()
        outcome = await self._erase(connector, seeded_subject, plan)
        assert (any(outcome.deleted.values()) or any(outcome.masked.values()) or outcome.retained
                or outcome.external is not None), \
            "erase reported no change, no retention and no external wait for the seeded subject"
        verification = await connector.verify_erasure(seeded_subject, plan)
        assert verification.remaining == {} and verification.ok, verification.remaining

        nothing = MemoryPlanStore()
        outcome = await self._erase(connector, absent_subject, nothing)
        if not self.may_hold_anyone:
            assert not any(outcome.deleted.values()) and not any(outcome.masked.values())
        assert (await connector.verify_erasure(absent_subject, nothing)).ok

    @pytest.mark.asyncio
    async def test_erasure_twice_is_harmless(self, connector: Connector, seeded_subject: Subject) -> None:
        """Re-running on the same plan, even with the applied items forgotten, raises nothing and changes nothing."""
        self._require(connector, Capability.ERASE)
        plan = MemoryPlanStore()
        await self._erase(connector, seeded_subject, plan)
        after_first = await self._after_erasure(connector, seeded_subject, plan)
        await self._erase(connector, seeded_subject, plan)
        assert await self._after_erasure(connector, seeded_subject, plan) == after_first
        plan.forget_done()  # as if the run crashed after applying, before recording it
        await self._erase(connector, seeded_subject, plan)
        assert await self._after_erasure(connector, seeded_subject, plan) == after_first
        assert after_first[1].ok

    @pytest.mark.asyncio
    async def test_restriction_and_lifting(
        self, connector: Connector, seeded_subject: Subject, absent_subject: Subject
    ) -> None:
        """Restrict changes something (repeatably); lifting changes it back and restores the data; twice is fine."""
        self._require(connector, Capability.RESTRICT)
        before = await self.observe(connector, seeded_subject)
        restricted = await connector.restrict(seeded_subject, REFERENCE)
        assert any(restricted.changed.values()), "restrict changed nothing for the seeded subject"
        await connector.restrict(seeded_subject, REFERENCE)  # a retry is harmless
        lifted = await connector.lift_restriction(seeded_subject, REFERENCE)
        assert any(lifted.changed.values()), "lift_restriction changed nothing after restrict"
        assert await self.observe(connector, seeded_subject) == before, "lifting did not restore the data"
        await connector.lift_restriction(seeded_subject, REFERENCE)
        assert await self.observe(connector, seeded_subject) == before
        assert not any((await connector.restrict(absent_subject, REFERENCE)).changed.values())
        assert not any((await connector.lift_restriction(absent_subject, REFERENCE)).changed.values())

    @pytest.mark.asyncio
    async def test_deactivation(self, connector: Connector, seeded_subject: Subject) -> None:
        """Deactivate changes something, deletes nothing, and can run again."""
        self._require(connector, Capability.DEACTIVATE)
        located = (await connector.locate(seeded_subject)).found
        outcome = await connector.deactivate(seeded_subject)
        assert any(outcome.changed.values()), "deactivate changed nothing for the seeded subject"
        assert (await connector.locate(seeded_subject)).found == located, "deactivation deleted something"
        await connector.deactivate(seeded_subject)
        assert (await connector.locate(seeded_subject)).found == located

    @pytest.mark.asyncio
    async def test_undeclared_capabilities_are_refused(self, connector: Connector, seeded_subject: Subject) -> None:
        """Every capability not declared raises UnsupportedError, which is not retryable."""
        for capability, calls in _undeclared_calls(connector, seeded_subject).items():
            if capability in connector.capabilities:
                continue
            for call in calls:
                with pytest.raises(UnsupportedError) as info:
                    await call()
                assert info.value.retryable is False

    @pytest.mark.asyncio
    async def test_bad_options_fail_clearly(
        self, connector_options: Mapping[str, Any] | None, bad_options: list[Mapping[str, Any]]
    ) -> None:
        """Each bad option set fails with ConfigurationError in from_options or open: one non-empty line."""
        cases = list(bad_options)
        if connector_options is not None:
            cases.append({**connector_options, "conformance_unknown_option": True})
        if not cases:
            pytest.skip("no bad_options and no connector_options to derive one from")
        for options in cases:
            error = await self._configuration_error(options)
            assert error is not None, f"no ConfigurationError for the options with keys {sorted(options)}"
            message = str(error)
            assert message.strip() and "\n" not in message, f"not one line: {message!r}"
            assert error.retryable is False

    async def _configuration_error(self, options: Mapping[str, Any]) -> ConfigurationError | None:
        """The ConfigurationError building and opening a connector from ``options`` raises, if any."""
        try:
            connector = build_connector(SYSTEM_NAME, self._type(), options)
            try:
                await connector.open()
            finally:
                await connector.close()
        except ConfigurationError as exc:
            return exc
        return None

    @pytest.mark.asyncio
    async def test_from_options_round_trip(
        self, connector: Connector, connector_options: Mapping[str, Any] | None, seeded_subject: Subject
    ) -> None:
        """The registry builds the same connector from the options: class, name, type, capabilities, answers."""
        if connector_options is None:
            pytest.skip(f"{type(self).__name__} gives no connector_options fixture")
        built = build_connector("round-trip", self._type(), connector_options)
        assert type(built) is type(connector)
        assert built.name == "round-trip"
        assert built.type_name == self._type()
        await built.open()
        try:
            assert built.capabilities == connector.capabilities
            assert (await built.locate(seeded_subject)).found == (await connector.locate(seeded_subject)).found
        finally:
            await built.close()
