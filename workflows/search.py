"""The custom search attributes of a request's workflow: what Temporal visibility can list it by.

None holds personal data: the tenant's configured name, the request's kind, its step and its due date.
The API sets all four when it starts a request (``GET /v1/requests`` lists by them); the workflow keeps
``DsrStep`` and ``DsrDueAt`` up to date with :func:`sync_request_attributes`, but only when it was started
with them, so that a server where they are not registered (the time-skipping test server, a workflow
started from the CLI) runs the same workflow without them.

Register them on a Temporal server before starting the API against it::

    temporal operator search-attribute create --name DsrTenant --type Keyword
    temporal operator search-attribute create --name DsrKind --type Keyword
    temporal operator search-attribute create --name DsrStep --type Keyword
    temporal operator search-attribute create --name DsrDueAt --type Datetime

(``dsr dev`` and the tests' dev server register them at start.)
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from workflows.models import RequestKind, RequestStatus, Step, end_of_day, one_calendar_month_after

DSR_TENANT = SearchAttributeKey.for_keyword("DsrTenant")
DSR_KIND = SearchAttributeKey.for_keyword("DsrKind")
DSR_STEP = SearchAttributeKey.for_keyword("DsrStep")
DSR_DUE_AT = SearchAttributeKey.for_datetime("DsrDueAt")

REQUEST_SEARCH_ATTRIBUTES: tuple[SearchAttributeKey, ...] = (DSR_TENANT, DSR_KIND, DSR_STEP, DSR_DUE_AT)
"""Every custom search attribute, to register on a server."""


def request_attributes(tenant: str, kind: RequestKind, step: Step, due_at: datetime) -> TypedSearchAttributes:
    """The search attributes a request's workflow is started with."""
    return TypedSearchAttributes([
        SearchAttributePair(DSR_TENANT, tenant),
        SearchAttributePair(DSR_KIND, kind.value),
        SearchAttributePair(DSR_STEP, step.value),
        SearchAttributePair(DSR_DUE_AT, due_at),
    ])


def received_attributes(tenant: str, kind: RequestKind, received_at: datetime) -> TypedSearchAttributes:
    """The search attributes of a request just received (step ``received``, due one calendar month later)."""
    return request_attributes(tenant, kind, Step.RECEIVED, end_of_day(one_calendar_month_after(received_at)))


def dispute_attributes(tenant: str) -> TypedSearchAttributes:
    """A dispute's search attributes: its tenant only (listings of requests select their workflow type)."""
    return TypedSearchAttributes([SearchAttributePair(DSR_TENANT, tenant)])


def attributes_registered() -> bool:
    """Whether this workflow was started with our search attributes, so the server knows them (workflow code only).

    A workflow that starts a request of its own (a dispute's follow-up) gives it search attributes only then:
    starting a child with attributes the server does not know would fail the workflow task.
    """
    return workflow.info().typed_search_attributes.get(DSR_TENANT) is not None


def sync_request_attributes(status: RequestStatus) -> None:
    """Upsert ``DsrStep`` and ``DsrDueAt`` where they differ from ``status`` (workflow code only).

    Nothing happens for a workflow started without them: upserting an attribute the server does not
    know would fail the workflow task.
    """
    current = workflow.info().typed_search_attributes
    if current.get(DSR_STEP) is None:
        return
    updates = []
    if current.get(DSR_STEP) != status.step.value:
        updates.append(DSR_STEP.value_set(status.step.value))
    if current.get(DSR_DUE_AT) != status.due_at:
        updates.append(DSR_DUE_AT.value_set(status.due_at))
    if updates:
        workflow.upsert_search_attributes(updates)
