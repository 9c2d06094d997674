"""Fixtures for the API tests: settings with two tenants and their tokens, a stub worker, test clients.

Two task queues: on the idle one no worker polls, so a started workflow just sits
there (enough to test creation, idempotency, authentication and validation); on
the live one a real worker runs the real workflows (requests, disputes, subject
coordinators) with stub activities, so that status queries and updates have a
workflow to talk to. With the stubs no system is configured: a request ends FAILED
("no system is configured") as soon as it reaches execution, and a dispute
restricts nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.api.support import LIST_SYSTEMS_GATES, STUB_ACTIVITIES, api_client, make_settings
from workers.config import Settings
from workers.worker import WORKFLOWS
from workflows.dispute import DisputeWorkflow
from workflows.subject import SubjectWorkflow


def live_workflows() -> list[type]:
    """The worker's workflows, and those a dispute needs (its subject coordinator) should it not list them yet."""
    return list(dict.fromkeys([*WORKFLOWS, DisputeWorkflow, SubjectWorkflow]))


@pytest.fixture(scope="module")
def idle_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose task queue no worker polls."""
    return make_settings(f"api-idle-{uuid.uuid4().hex}", tmp_path_factory.mktemp("dsr-idle"))


@pytest.fixture(scope="module")
async def live_settings(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Settings]:
    """Settings whose task queue a real worker (real workflows, stub activities) polls."""
    settings = make_settings(f"api-live-{uuid.uuid4().hex}", tmp_path_factory.mktemp("dsr-live"))
    async with Worker(
        temporal_env.client,
        task_queue=settings.temporal.task_queue,
        workflows=live_workflows(),
        activities=STUB_ACTIVITIES,
    ):
        try:
            yield settings
        finally:
            for gate in LIST_SYSTEMS_GATES.values():  # a blocked stub would hold the worker's shutdown
                gate.set()


@pytest.fixture
async def idle_api(idle_settings: Settings, temporal_env: WorkflowEnvironment) -> AsyncIterator[TestClient]:
    """The API over the idle task queue."""
    async with api_client(idle_settings, temporal_env.client) as tc:
        yield tc


@pytest.fixture
async def live_api(live_settings: Settings, temporal_env: WorkflowEnvironment) -> AsyncIterator[TestClient]:
    """The API over the live task queue."""
    async with api_client(live_settings, temporal_env.client) as tc:
        yield tc
