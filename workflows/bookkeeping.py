"""The short bookkeeping activities (audit records, notifications, the export link) as local activities.

A local activity runs in the worker inside the workflow task that schedules it and is recorded as one marker
event, with no activity task going through the Temporal server: a request's ten audit records and its
notifications were half of its activities and most of the server's work (benchmarks/throughput.py).
They fit what local activities are for (docs.temporal.io/local-activity): one INSERT or one message, each
idempotent by its own key, so that a workflow task that is retried after they ran (a worker killed before
it completed the task) runs them again harmlessly.

Their options are the remote calls' own (timeouts, retry policy, non-retryable error types). A retry whose
backoff is longer than ``LOCAL_RETRY_THRESHOLD`` waits on a workflow timer rather than inside the workflow
task, so that a database or mail server that is down does not hold the task (and the request's updates).

Workflows that started before this module existed scheduled these as ordinary activities: the patch
``LOCAL_BOOKKEEPING`` keeps them doing so when they replay (``workflow.patched`` is decided once per run,
at its first bookkeeping call, and a replayed first call without the patch marker answers False).
Deterministic: activities are called by name.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

from workflows.tasks import AuditEvent

LOCAL_BOOKKEEPING = "local-bookkeeping"
"""Patch id: bookkeeping runs as local activities in runs that started with this code."""
LOCAL_RETRY_THRESHOLD = timedelta(seconds=10)
"""Retry backoffs up to this run inside the workflow task; longer ones wait on a timer."""


def local() -> bool:
    """Whether this run's bookkeeping is local (the patch ``LOCAL_BOOKKEEPING``, decided once per run)."""
    return workflow.patched(LOCAL_BOOKKEEPING)


async def run_bookkeeping(activity: str, arg: Any, options: dict[str, Any], result_type: type | None = None) -> Any:
    """Run a bookkeeping activity by name: local in patched runs, an ordinary activity in older ones.

    Args:
        activity: The activity's name (``dsr.record_event``, ``dsr.notify``, ``dsr.export_link``).
        arg: Its single argument.
        options: The call's ``start_to_close_timeout`` and ``retry_policy`` (no heartbeat: these are short).
        result_type: The result's type, for a name-called activity.

    Raises:
        temporalio.exceptions.ActivityError: The activity failed after its retries, as for a remote call.
    """
    if local():
        return await workflow.execute_local_activity(activity, arg, result_type=result_type,
                                                     local_retry_threshold=LOCAL_RETRY_THRESHOLD, **options)
    return await workflow.execute_activity(activity, arg, result_type=result_type, **options)


class AuditKeys:
    """Dedup keys for audit records written by local activities, stable across workflow task attempts.

    A remote ``dsr.record_event`` is scheduled once, with its input (and its workflow time) in the history, so
    the default key (request, event, system, time) is the same for each of its retries. A local one runs
    before its workflow task completes: if the task fails after that and runs again, ``workflow.now()`` is
    the new attempt's time, and a key with the time in it would write the record twice. The key is instead
    the run, the event, the system and how many times this run has recorded that event for that system;
    the record keeps the time of the attempt that wrote it.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], int] = {}

    def key(self, event: AuditEvent) -> str:
        """The key of ``event``, counting it as this run's next such record."""
        system = event.system or ""
        n = self._seen[(event.event, system)] = self._seen.get((event.event, system), 0) + 1
        return f"{event.request_id}|{event.event}|{system}|{workflow.info().run_id}#{n}"


async def record_event(event: AuditEvent, options: dict[str, Any], keys: AuditKeys) -> None:
    """Append ``event`` to the audit trail (``dsr.record_event``), locally with a stable key in patched runs."""
    if local():
        event = event.model_copy(update={"dedup_key": keys.key(event)})
    await run_bookkeeping("dsr.record_event", event, options)
