"""Quick requests to one agent (hvmesh.agent.<host>.<op>) answer errors as micro services do."""

from __future__ import annotations

import msgspec
import pytest

from hvmesh.core.bus import micro
from hvmesh.core.protocol import errors, subjects
from tests.support import Deployment


async def test_console_log_of_an_unknown_server_is_a_404_reply(cloud: Deployment) -> None:
    nc = await cloud.connect("admin")
    with pytest.raises(errors.NotFound, match="no-such-server"):
        await micro.call(
            nc, subjects.agent("fake-0001", "console_log"), {"server_id": "no-such-server"}
        )


async def test_a_driver_reporting_changed_resources_rewrites_the_host_record(
    deployment: Deployment,
) -> None:
    """ComputeDriver.inventory_changed: the runtime reads the inventory again at once."""
    agent = await deployment.start_agent("grows")
    assert deployment.store is not None
    before = (await deployment.store.hosts.get("grows")).value.inventories["VCPU"].total
    agent.driver.fake = msgspec.structs.replace(agent.driver.fake, vcpus=before + 8)
    await agent.driver.inventory_changed()
    after = (await deployment.store.hosts.get("grows")).value
    assert after.inventories["VCPU"].total == before + 8
