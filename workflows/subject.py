"""One subject, one change at a time: the subject coordinator, and the side of the workflows that wait for it.

``SubjectWorkflow`` runs once per subject (id ``subject_workflow_id(tenant, subject_key)``, opaque). It keeps a
first-come-first-served queue of the workflows that want to change the subject's data and lets one at a time
proceed, by signalling ``lock_granted`` to it; the holder signals ``release`` when it is done.

Disputes: while a dispute restricts the subject (signals ``restricted`` / ``unrestricted``, GDPR Art. 18), a
waiting *erasure* is passed over and keeps its place; the waiters behind it that are eligible proceed in their
order. Only erasure is held, as the policy says ("while a subject is restricted, a new erasure for them waits for
the resolution"): an erasure would decide the dispute before the administrator does, whereas the other kinds
either read (access, export) or are what a restricted subject may still ask for (rectification of contested data,
objection, deactivation: nothing is deleted). ``HELD_WHILE_RESTRICTED`` is the one place to change that.

How a workflow reaches the coordinator: signal-with-start is a client operation, not available inside a workflow.
So a workflow first signals the coordinator; when that fails because no coordinator runs, it starts one as a child
workflow (parent close policy ABANDON, so that it outlives its starter; id reuse ALLOW_DUPLICATE, so that a subject
can have a new one after the last one ended) whose *input* already holds the signal's content (``SubjectInput``),
which makes the start and the request one atomic step. When two workflows start it at once, the loser gets
``WorkflowAlreadyStartedError`` and signals instead. A signal accepted by a running coordinator is never lost: the
server refuses to complete a workflow while a signal is pending, so the coordinator sees it before it can end.
Clients outside Temporal (the API) may signal-with-start it directly with a bare ``SubjectInput``.

Liveness: a holder that ends without releasing (terminated, timed out) would block the subject for ever, so every
``HOLDER_CHECK`` the coordinator signals ``subject_lock_check`` (a no-op) to its holder: a signal that fails means
the holder is gone, so the lock passes on. A waiter that is gone before its turn (its ``lock_granted`` fails) is
passed over the same way. A dispute that is terminated without ending its restriction leaves the subject restricted
(the safe side); an operator ends it with the ``unrestricted`` signal.

The coordinator ends when nobody holds the lock, nobody waits and no dispute restricts the subject for
``IDLE_TIMEOUT``; it continues as new, carrying its state, when the server suggests it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

from workflows.messages import (
    LOCK_GRANTED_SIGNAL,
    SUBJECT_WORKFLOW,
    LockRelease,
    LockRequest,
    RestrictionChange,
    SubjectInput,
    SubjectState,
    subject_workflow_id,
)
from workflows.models import RequestKind

IDLE_TIMEOUT = timedelta(days=1)
"""An idle coordinator (no holder, no waiter, no restriction) ends after this long."""
HOLDER_CHECK = timedelta(hours=1)
"""How often the coordinator checks that its holder still runs."""
HELD_WHILE_RESTRICTED: frozenset[str] = frozenset({RequestKind.ERASURE})
"""Kinds that wait while a dispute restricts the subject (see the module's docstring)."""
LOCK_CHECK_SIGNAL = "subject_lock_check"
"""No-op signal the coordinator sends its holder to learn whether it still runs (handled by SubjectLockClient)."""
START_RETRY = timedelta(seconds=5)
"""Pause before trying again when the coordinator was neither reachable nor startable (it was just ending)."""

LockKind = RequestKind | Literal["dispute"]


@workflow.defn(name=SUBJECT_WORKFLOW)
class SubjectWorkflow:
    """The lock and the restriction flag of one subject. Holds no personal data: workflow ids and kinds only."""

    @workflow.init
    def __init__(self, start: SubjectInput) -> None:
        self._tenant = start.tenant
        self._subject_key = start.subject_key
        self._holder: LockRequest | None = start.holder
        self._waiting: list[LockRequest] = list(start.waiting)
        self._restricted_by: list[str] = list(start.restricted_by)
        # Set by every signal, so that the main loop looks again.
        self._changed = False
        # The periodic check of the holder is due.
        self._check_holder = False
        # The holder asked again (a duplicate acquire): grant it again.
        self._regrant = False

    @workflow.run
    async def run(self, start: SubjectInput) -> SubjectState:
        """Grant the lock in turn until the subject has been idle for ``IDLE_TIMEOUT``; return the last state."""
        while True:
            self._changed = False
            await self._grant()
            if self._changed:  # a signal arrived while a grant was being sent
                continue
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry())
            try:
                await workflow.wait_condition(lambda: self._changed, timeout=self._timeout())
            except TimeoutError:
                if self._idle():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    return self.state()
                self._check_holder = self._holder is not None

    # --- signals and query --------------------------------------------------------------

    @workflow.signal
    def acquire(self, request: LockRequest) -> None:
        """A workflow asks for the lock; asking twice changes nothing (the holder is told again)."""
        if self._holder is not None and self._holder.workflow_id == request.workflow_id:
            self._regrant = True
        elif all(w.workflow_id != request.workflow_id for w in self._waiting):
            self._waiting.append(request)
        self._changed = True

    @workflow.signal
    def release(self, release: LockRelease) -> None:
        """The holder is done, or a waiter gives up its place."""
        if self._holder is not None and self._holder.workflow_id == release.workflow_id:
            self._holder = None
        self._waiting = [w for w in self._waiting if w.workflow_id != release.workflow_id]
        self._changed = True

    @workflow.signal
    def restricted(self, change: RestrictionChange) -> None:
        """A dispute restricts the subject's processing: erasures wait until it ends."""
        if change.dispute_id not in self._restricted_by:
            self._restricted_by.append(change.dispute_id)
        self._changed = True

    @workflow.signal
    def unrestricted(self, change: RestrictionChange) -> None:
        """A dispute no longer restricts the subject."""
        self._restricted_by = [d for d in self._restricted_by if d != change.dispute_id]
        self._changed = True

    @workflow.query
    def state(self) -> SubjectState:
        """Who holds the lock, who waits (in order), and which disputes restrict the subject."""
        return SubjectState(
            holder=self._holder.workflow_id if self._holder else None,
            waiting=[w.workflow_id for w in self._waiting],
            restricted_by=list(self._restricted_by),
        )

    # --- granting -----------------------------------------------------------------------

    async def _grant(self) -> None:
        """Check the holder when due; then, while nobody holds the lock, give it to the first eligible waiter."""
        if (self._check_holder or self._regrant) and self._holder is not None:
            holder = self._holder
            signal = LOCK_GRANTED_SIGNAL if self._regrant else LOCK_CHECK_SIGNAL
            if not await self._tell(holder, signal) and self._holder is holder:
                self._holder = None
        self._check_holder = self._regrant = False
        while self._holder is None:
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._waiting = [w for w in self._waiting if w is not waiter]
            self._holder = waiter
            # A failed signal means the waiter has ended: pass it over (unless it released meanwhile).
            if not await self._tell(waiter) and self._holder is waiter:
                self._holder = None

    def _next_waiter(self) -> LockRequest | None:
        for waiter in self._waiting:
            if self._restricted_by and waiter.kind in HELD_WHILE_RESTRICTED:
                continue
            return waiter
        return None

    async def _tell(self, waiter: LockRequest, signal: str = LOCK_GRANTED_SIGNAL) -> bool:
        """Signal ``lock_granted`` (or the check) to the waiter; False when it no longer runs."""
        try:
            await workflow.get_external_workflow_handle(waiter.workflow_id).signal(signal)
        except FailureError as err:
            workflow.logger.warning("subject lock: %s is gone (%s); passing the lock on", waiter.workflow_id,
                                    err.message)
            return False
        return True

    def _idle(self) -> bool:
        return self._holder is None and not self._waiting and not self._restricted_by

    def _timeout(self) -> timedelta | None:
        if self._idle():
            return IDLE_TIMEOUT
        if self._holder is not None:
            return HOLDER_CHECK
        return None  # only held erasures wait: nothing to do until the restriction ends

    def _carry(self) -> SubjectInput:
        return SubjectInput(tenant=self._tenant, subject_key=self._subject_key, holder=self._holder,
                            waiting=list(self._waiting), restricted_by=list(self._restricted_by))


# --- the client side, for workflows -------------------------------------------------------------


async def signal_subject(tenant: str, subject_key: str, signal: str, arg: BaseModel, *,
                         start: SubjectInput | None = None) -> bool:
    """Signal the subject's coordinator from a workflow; start it first when none runs and ``start`` is given.

    ``start`` must already hold what the signal says (a waiter in ``waiting``, a dispute in ``restricted_by``):
    a started coordinator begins from it, so the signal itself is then not sent.

    Returns:
        False when no coordinator runs and ``start`` is None (nothing to tell: a release or an end of restriction
        for a subject nobody coordinates), True otherwise.
    """
    coordinator = subject_workflow_id(tenant, subject_key)
    while True:
        try:
            await workflow.get_external_workflow_handle(coordinator).signal(signal, arg)
            return True
        except FailureError:
            if start is None:
                return False
        try:
            await workflow.start_child_workflow(
                SUBJECT_WORKFLOW, start, id=coordinator,
                parent_close_policy=ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
            return True
        except WorkflowAlreadyStartedError:
            # Another workflow started it between our signal and our start: signal it. Should it have ended
            # again in between (it was idle for a day), the next round starts it; pause so as not to spin.
            try:
                await workflow.get_external_workflow_handle(coordinator).signal(signal, arg)
                return True
            except FailureError:
                await workflow.sleep(START_RETRY)


class SubjectLockClient:
    """Mixin for a workflow that changes a subject's data: wait for the subject's lock, then give it back.

    The inheriting class is a ``@workflow.defn``; it gets the ``lock_granted`` signal handler from here. Usage::

        if await self._acquire_subject(tenant, subject_key, kind, give_up=lambda: cancelled):
            try:
                ...  # the execution steps
            finally:
                await self._release_subject(tenant, subject_key)

    One lock at a time per workflow. ``_holds_subject_lock`` tells whether it is held.
    """

    # Class-level defaults, so that the mixin needs no __init__ of its own.
    _subject_lock_waiting: bool = False
    _subject_lock_granted: bool = False

    @workflow.signal(name=LOCK_GRANTED_SIGNAL)
    def lock_granted(self) -> None:
        """The subject coordinator lets this workflow proceed (a grant after giving up is ignored)."""
        if self._subject_lock_waiting:
            self._subject_lock_granted = True

    @workflow.signal(name=LOCK_CHECK_SIGNAL)
    def subject_lock_check(self) -> None:
        """The subject coordinator checks that this workflow still runs; nothing to do."""

    @property
    def _holds_subject_lock(self) -> bool:
        return self._subject_lock_granted

    async def _acquire_subject(self, tenant: str, subject_key: str, kind: LockKind, *,
                               give_up: Callable[[], bool] | None = None) -> bool:
        """Queue for the subject's lock and wait (durably, without limit) until it is granted.

        Args:
            tenant: The subject's tenant.
            subject_key: The subject's opaque key.
            kind: The request kind (an erasure waits while a dispute restricts the subject), or "dispute".
            give_up: Checked whenever the workflow wakes up (e.g. on a cancel update); when it returns True, the
                wait ends, the place in the queue is given back, and False is returned.

        Returns:
            True when the lock is held; False when ``give_up`` ended the wait.
        """
        request = LockRequest(workflow_id=workflow.info().workflow_id, kind=kind)
        self._subject_lock_granted = False
        self._subject_lock_waiting = True
        await signal_subject(tenant, subject_key, "acquire", request,
                             start=SubjectInput(tenant=tenant, subject_key=subject_key, waiting=[request]))
        await workflow.wait_condition(lambda: self._subject_lock_granted or (give_up is not None and give_up()))
        self._subject_lock_waiting = False
        if self._subject_lock_granted:
            return True
        # Giving up: leave the queue (or, had the grant raced the decision, hand the lock straight back).
        await self._release_subject(tenant, subject_key)
        return False

    async def _release_subject(self, tenant: str, subject_key: str) -> None:
        """Give the lock back (or leave the queue); safe to call when not holding it."""
        self._subject_lock_granted = False
        self._subject_lock_waiting = False
        await signal_subject(tenant, subject_key, "release", LockRelease(workflow_id=workflow.info().workflow_id))
