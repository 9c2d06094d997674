"""A restriction request's life after it is applied: in force until an administrator lifts it, with notice.

A mixin of :class:`workflows.request.DataSubjectRequestWorkflow`. While the restriction is in force the
subject's coordinator knows the subject is restricted (so a new erasure waits, as during a dispute), and
the request stays open in step ``restricted``. An administrator's ``lift`` tells the subject first, waits
the notice period (GDPR Art. 18(3)), lifts the flags in every system that holds them, and only then
completes the request.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from connectors.contract import ActionOutcome
from workflows import gates
from workflows.messages import NotificationKind, RestrictionChange, SubjectInput
from workflows.models import DsrRequest, RequestStatus, Step, SystemState
from workflows.steps import RequestSteps, with_retry
from workflows.subject import signal_subject
from workflows.tasks import ActionTask, SystemInfo
from workflows.updates import Lifting, RecordedLifting


class RestrictionHold(RequestSteps):
    """Keeps a restriction in force until lifted."""

    _systems: dict[str, SystemInfo]

    async def _keep_restricted(self, request: DsrRequest) -> RequestStatus:
        """Hold the restriction, then lift it after notice; the request completes when it is lifted."""
        self._enter_step(Step.RESTRICTED)
        change = RestrictionChange(dispute_id=request.id)
        if request.subject_key:
            await signal_subject(request.tenant, request.subject_key, "restricted", change,
                                 start=SubjectInput(tenant=request.tenant, subject_key=request.subject_key,
                                                    restricted_by=[request.id]))
        await self._notify(NotificationKind.RESTRICTION_APPLIED,
                           facts={"systems": sorted(n for n, st in self._status.systems.items()
                                                    if st.state == SystemState.DONE)})
        await workflow.wait_condition(lambda: self._status.lifting is not None)
        lifting = self._status.lifting
        assert lifting is not None
        await self._notify(NotificationKind.RESTRICTION_LIFT_NOTICE,
                           facts={"lift_on": lifting.lift_on.isoformat(), "reason": lifting.reason})
        await self._audit("lift_notified", actor=lifting.actor, detail={"lift_on": lifting.lift_on.isoformat()})
        remaining = lifting.lift_on - workflow.now()
        if remaining > timedelta(0):
            await workflow.sleep(remaining)
        await asyncio.gather(*(self._lift(self._systems[n]) for n, st in self._status.systems.items()
                               if st.state == SystemState.DONE and n in self._systems))
        if request.subject_key:
            await signal_subject(request.tenant, request.subject_key, "unrestricted", change)
        self._status.lifted_at = workflow.now()
        await self._notify(NotificationKind.RESTRICTION_LIFTED, facts={"lifted_at": self._status.lifted_at.isoformat()})
        return await self._finish(Step.COMPLETED, None)

    async def _lift(self, system: SystemInfo) -> None:
        task = ActionTask(**self._task(system.name).model_dump(), reference=self._request.id)
        try:
            out = await workflow.execute_activity("dsr.lift_restriction", task, result_type=ActionOutcome,
                                                  **with_retry(self._quick, system.retry))
        except ActivityError as err:  # the flag stays: the safe side; the audit trail says so
            await self._system_failed(self._status.systems[system.name], "lift", err)
            return
        await self._audit("restriction_lifted", system=system.name, detail={"changed": out.changed})

    @workflow.update
    async def lift(self, lifting: Lifting) -> RecordedLifting:
        """An administrator ends the restriction; it is lifted after the notice period."""
        now = workflow.now()
        self._status.lifting = RecordedLifting(
            **lifting.model_dump(), decided_at=now,
            lift_on=now + timedelta(days=self._request.policy.lift_notice_days),
        )
        return self._status.lifting

    @lift.validator
    def _validate_lifting(self, lifting: Lifting) -> None:
        gates.check_lifting(self._request, self._status, lifting)
