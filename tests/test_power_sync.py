"""Power-state sync: what the hypervisor says, as agents report it, applied to servers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from hvmesh.core.conductor.power_sync import synced
from hvmesh.core.ops import audit
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Flavor, Server
from hvmesh.core.protocol.subjects import EVENTS_STREAM
from tests.support import (
    ApiClient,
    Deployment,
    boot,
    drained,
    make_flavor_image,
    resting,
    wait_server,
)


async def events_handled(deployment: Deployment) -> None:
    """Wait until the conductor has handled (acknowledged) every agent event published."""
    await drained(deployment, EVENTS_STREAM, "conductor-events")


async def one_host(deployment: Deployment, admin: ApiClient, **compute: Any) -> Any:
    await deployment.start_core()
    agent = await deployment.start_agent("h1", deployment.config(compute=compute))
    await make_flavor_image(admin)
    return agent


@pytest.mark.parametrize("power", [S.SHUTDOWN, S.CRASHED])
async def test_stopped_behind_our_back_shows_shutoff(
    deployment: Deployment, admin: ApiClient, power: int
) -> None:
    agent = await one_host(deployment, admin)
    server = await boot(deployment, admin)

    agent.driver.instances[server.id] = power  # the guest shut down from inside
    await agent.report_power_states()
    stopped = await wait_server(deployment.store, server.id, resting(S.STOPPED))

    assert stopped is not None and stopped.power_state == power and stopped.host == "h1"
    view = (await admin("servers.get", {"id": server.id}))["server"]
    assert view["status"] == "SHUTOFF"
    assert await audit.audit(deployment.store) == []

    # It starts again as any stopped server does.
    await admin("servers.action", {"id": server.id, "action": "start"})
    started = await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    assert started is not None and started.power_state == S.RUNNING
    assert agent.driver.instances[server.id] == S.RUNNING


async def test_periodic_report(deployment: Deployment, admin: ApiClient) -> None:
    agent = await one_host(deployment, admin, sync_power_state_interval=0.2)
    server = await boot(deployment, admin)

    agent.driver.instances[server.id] = S.SHUTDOWN
    stopped = await wait_server(deployment.store, server.id, resting(S.STOPPED))
    assert stopped is not None and stopped.power_state == S.SHUTDOWN


async def test_instance_gone_from_the_hypervisor(deployment: Deployment, admin: ApiClient) -> None:
    agent = await one_host(deployment, admin)
    server = await boot(deployment, admin)

    del agent.driver.instances[server.id]
    await agent.report_power_states()
    stopped = await wait_server(deployment.store, server.id, resting(S.STOPPED))
    assert stopped is not None and stopped.power_state == S.NOSTATE and stopped.host == "h1"
    view = (await admin("servers.get", {"id": server.id}))["server"]
    assert view["status"] == "SHUTOFF"


async def test_server_in_an_action_is_left_alone(deployment: Deployment, admin: ApiClient) -> None:
    agent = await one_host(deployment, admin)
    server = await boot(deployment, admin)
    agent.driver.fake.step_delay = 3.0  # the reboot takes a while

    await admin("servers.action", {"id": server.id, "action": "reboot"})
    agent.driver.instances[server.id] = S.SHUTDOWN  # seen mid-reboot
    await agent.report_power_states()
    await events_handled(deployment)
    during = (await deployment.store.servers.get(server.id)).value
    assert during.task_state == S.REBOOTING
    assert during.vm_state == S.ACTIVE and during.power_state == S.RUNNING

    # The reboot's own outcome wins; the report taken before it is not applied late.
    after = await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    assert after is not None and after.power_state == S.RUNNING
    await events_handled(deployment)
    final = (await deployment.store.servers.get(server.id)).value
    assert final.vm_state == S.ACTIVE and final.power_state == S.RUNNING


async def test_report_from_another_host_is_ignored(
    deployment: Deployment, admin: ApiClient
) -> None:
    agent = await one_host(deployment, admin)
    other = await deployment.start_agent("h2")
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None
    # Whichever host does not run it has a stray copy, stopped: its report says nothing.
    stray = other if host == "h1" else agent
    stray.driver.instances[server.id] = S.SHUTDOWN
    await stray.report_power_states()
    await events_handled(deployment)
    assert (await deployment.store.servers.get(server.id)).value.vm_state == S.ACTIVE


# --- the rule itself ---------------------------------------------------------------------


def record(**kw: Any) -> Server:
    flavor = Flavor(id="f", name="m1.small", vcpus=1, ram_mb=512, disk_gb=1)
    base = Server(
        id="s",
        name="vm",
        project="p",
        user="u",
        flavor=flavor,
        image_id="i",
        image_name="cirros",
        vm_state=S.ACTIVE,
        task_state=None,
        power_state=S.RUNNING,
        host="h1",
    )
    return msgspec.structs.replace(base, **kw)


@pytest.mark.parametrize(
    ("vm_state", "power", "expected"),
    [
        (S.ACTIVE, S.SHUTDOWN, S.STOPPED),
        (S.ACTIVE, S.CRASHED, S.STOPPED),
        (S.ACTIVE, S.NOSTATE, S.STOPPED),
        (S.PAUSED, S.SHUTDOWN, S.STOPPED),
        (S.SUSPENDED, S.NOSTATE, S.STOPPED),
    ],
)
def test_synced_stops(vm_state: str, power: int, expected: str) -> None:
    new = synced(record(vm_state=vm_state), "h1", power, now())
    assert new is not None and new.vm_state == expected and new.power_state == power


def test_synced_leaves_alone() -> None:
    assert synced(record(), "h1", S.RUNNING, now()) is None  # nothing changed
    assert synced(record(), "h2", S.SHUTDOWN, now()) is None  # not its host
    assert synced(record(task_state=S.REBOOTING), "h1", S.SHUTDOWN, now()) is None
    off = record(vm_state=S.SHELVED, power_state=S.SHUTDOWN)
    assert synced(off, "h1", S.SHUTDOWN, now()) is None
    # A report taken before the record's last change (an action finished meanwhile).
    fresh = record(updated_at=now())
    assert synced(fresh, "h1", S.SHUTDOWN, fresh.updated_at - 1) is None
    # A stopped server the hypervisor runs again: the power state is recorded.
    stopped = record(vm_state=S.STOPPED, power_state=S.SHUTDOWN)
    new = synced(stopped, "h1", S.RUNNING, now())
    assert new is not None and new.vm_state == S.STOPPED and new.power_state == S.RUNNING


async def test_a_host_syncs_by_reading_its_own_servers_only(
    deployment: Deployment, admin: ApiClient
) -> None:
    """From its first report on, a host reads its own record and its own servers' records,
    never the servers bucket: its allocations say which servers may be placed on it,
    including one the hypervisor lost."""
    agent = await one_host(deployment, admin)
    await deployment.start_agent("h2")
    for i in range(6):
        await boot(deployment, admin, f"vm{i}")
    store = agent.store
    mine = {s.id for s in await store.servers.values() if s.host == "h1"}
    assert mine and len(mine) < 6  # both hosts have some
    lost = sorted(mine)[0]
    del agent.driver.instances[lost]  # the hypervisor lost one
    agent.host_servers.ids.clear()  # as a restarted agent: nothing seen yet

    reads: list[str] = []
    real_get = store.servers.get

    async def get(key: str) -> Any:
        reads.append(key)
        return await real_get(key)

    def no_scan(*_: Any, **__: Any) -> Any:
        raise AssertionError("the power-state sync read the whole servers bucket")

    store.servers.get = get  # type: ignore[method-assign]
    store.servers.entries = no_scan  # type: ignore[method-assign]
    store.servers.values = no_scan  # type: ignore[method-assign]
    try:
        await agent.report_power_states()
    finally:
        del store.servers.get, store.servers.entries, store.servers.values
    assert set(reads) == mine
    gone = await wait_server(deployment.store, lost, resting(S.STOPPED))
    assert gone is not None and gone.power_state == S.NOSTATE
