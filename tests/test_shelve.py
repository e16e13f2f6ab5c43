"""Shelve, shelve-offload (at once, never, after shelved_offload_time) and unshelve."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from hvmesh.core.ops import audit
from hvmesh.core.protocol import errors
from hvmesh.core.protocol import states as S
from tests.support import (
    ApiClient,
    Deployment,
    act,
    boot,
    make_flavor_image,
    resting,
    wait_server,
)
from tests.test_agent_death import last_action, restart, work_done


async def start(
    deployment: Deployment,
    admin: ApiClient,
    offload: float,
    hosts: tuple[str, ...] = ("h1", "h2"),
    **conductor: Any,
) -> dict[str, Any]:
    cfg = deployment.config(conductor={"shelved_offload_time": offload, **conductor})
    await deployment.start_core(cfg)
    agents = {h: await deployment.start_agent(h, cfg) for h in hosts}
    await make_flavor_image(admin)
    return agents


async def act_id(admin: ApiClient, server_id: str, action: str) -> str:
    """Ask for an action; its request id."""
    return (await act(admin, server_id, action))["request_id"]


async def allocations(deployment: Deployment, server_id: str) -> list[str]:
    """The hosts holding a claim for the server."""
    hosts = await deployment.store.hosts.values()
    return [h.name for h in hosts if server_id in h.allocations]


async def test_shelve_offloads_at_once(deployment: Deployment, admin: ApiClient) -> None:
    agents = await start(deployment, admin, offload=0)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None

    request_id = await act_id(admin, server.id, "shelve")
    shelved = await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))

    assert shelved is not None
    assert shelved.host is None and shelved.power_state == S.NOSTATE and shelved.fault is None
    assert server.id not in agents[host].driver.instances
    assert await allocations(deployment, server.id) == []
    action = await last_action(deployment, server.id, request_id)
    assert action.message is None and action.finish_time is not None
    assert {"conductor_shelve", "compute_power_off", "compute_destroy"} <= {
        e.event for e in action.events
    }
    view = (await admin("servers.get", {"id": server.id}))["server"]
    assert view["status"] == "SHELVED_OFFLOADED"
    assert await audit.audit(deployment.store) == []

    # Unshelve: scheduled afresh, spawned, ACTIVE with a claim on its new host only.
    await act_id(admin, server.id, "unshelve")
    back = await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    assert back is not None and back.host is not None and back.power_state == S.RUNNING
    assert agents[back.host].driver.instances[server.id] == S.RUNNING
    assert await allocations(deployment, server.id) == [back.host]
    record = (await deployment.store.hosts.get(back.host)).value
    assert server.id not in record.in_progress
    assert await audit.audit(deployment.store) == []


async def test_shelve_never_offloaded_keeps_host(deployment: Deployment, admin: ApiClient) -> None:
    agents = await start(deployment, admin, offload=-1)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None

    await act_id(admin, server.id, "shelve")
    shelved = await wait_server(deployment.store, server.id, resting(S.SHELVED))
    assert shelved is not None and shelved.host == host and shelved.power_state == S.SHUTDOWN
    assert agents[host].driver.instances[server.id] == S.SHUTDOWN
    assert await allocations(deployment, server.id) == [host]
    assert await audit.audit(deployment.store) == []

    # Unshelve from SHELVED: powered on where it is.
    await act_id(admin, server.id, "unshelve")
    back = await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    assert back is not None and back.host == host and back.power_state == S.RUNNING
    assert agents[host].driver.instances[server.id] == S.RUNNING
    assert await allocations(deployment, server.id) == [host]
    assert await audit.audit(deployment.store) == []


async def test_shelve_then_offload_then_unshelve(deployment: Deployment, admin: ApiClient) -> None:
    agents = await start(deployment, admin, offload=-1)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None

    # A stopped server is shelved without a power-off step.
    await act_id(admin, server.id, "stop")
    await wait_server(deployment.store, server.id, resting(S.STOPPED))
    request_id = await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED))
    events = {e.event for e in (await last_action(deployment, server.id, request_id)).events}
    assert "compute_power_off" not in events

    request_id = await act_id(admin, server.id, "shelve-offload")
    offloaded = await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    assert offloaded is not None and offloaded.host is None
    assert server.id not in agents[host].driver.instances
    assert await allocations(deployment, server.id) == []
    assert (await last_action(deployment, server.id, request_id)).message is None
    assert await audit.audit(deployment.store) == []

    await act_id(admin, server.id, "unshelve")
    back = await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    assert back is not None and back.host is not None
    assert await allocations(deployment, server.id) == [back.host]
    assert await audit.audit(deployment.store) == []


async def test_delayed_offload(deployment: Deployment, admin: ApiClient) -> None:
    agents = await start(deployment, admin, offload=1.0)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None

    await act_id(admin, server.id, "shelve")
    shelved = await wait_server(deployment.store, server.id, resting(S.SHELVED))
    assert shelved is not None and shelved.host == host
    assert await allocations(deployment, server.id) == [host]
    # The timer asks for a shelve-offload once it is due.
    offloaded = await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    assert offloaded is not None and offloaded.host is None
    assert server.id not in agents[host].driver.instances
    assert await allocations(deployment, server.id) == []
    logged = [a.action for a in await deployment.store.server_actions.values(prefix=server.id)]
    assert sorted(logged) == ["create", "shelve", "shelve-offload"]
    assert await audit.audit(deployment.store) == []


async def test_unshelved_before_the_offload_is_due_stays(
    deployment: Deployment, admin: ApiClient
) -> None:
    agents = await start(deployment, admin, offload=1.5)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None

    await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED))
    await act_id(admin, server.id, "unshelve")
    await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    # Shelved again: the first shelve's timer is stale; this one's offloads it later.
    await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED))
    offloaded = await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    assert offloaded is not None
    logged = [a.action for a in await deployment.store.server_actions.values(prefix=server.id)]
    assert logged.count("shelve-offload") == 1
    assert server.id not in agents[host].driver.instances
    assert await audit.audit(deployment.store) == []


async def test_shelve_conflicts(deployment: Deployment, admin: ApiClient) -> None:
    await start(deployment, admin, offload=-1)
    server = await boot(deployment, admin)

    with pytest.raises(errors.Conflict, match="vm_state active"):
        await act_id(admin, server.id, "unshelve")
    with pytest.raises(errors.Conflict, match="vm_state active"):
        await act_id(admin, server.id, "shelve-offload")
    await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED))
    with pytest.raises(errors.Conflict, match="vm_state shelved"):
        await act_id(admin, server.id, "shelve")
    with pytest.raises(errors.Conflict, match="vm_state shelved"):
        await act_id(admin, server.id, "stop")
    await act_id(admin, server.id, "shelve-offload")
    await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    with pytest.raises(errors.Conflict, match="vm_state shelved_offloaded"):
        await act_id(admin, server.id, "shelve-offload")
    with pytest.raises(errors.Conflict, match="vm_state shelved_offloaded"):
        await act_id(admin, server.id, "shelve")
    assert await audit.audit(deployment.store) == []


async def test_unshelve_with_no_valid_host_stays_offloaded(
    deployment: Deployment, admin: ApiClient
) -> None:
    await start(deployment, admin, offload=0, hosts=("h1",))
    server = await boot(deployment, admin)
    await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    # The only host is disabled meanwhile.
    await deployment.store.hosts.mutate("h1", _disabled)

    request_id = await act_id(admin, server.id, "unshelve")
    after = await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    assert after is not None and after.host is None
    assert after.fault is not None and "No valid host" in after.fault.message
    assert (await last_action(deployment, server.id, request_id)).message == "Error"
    assert await allocations(deployment, server.id) == []
    assert await audit.audit(deployment.store) == []


def _disabled(h: Any) -> Any:
    return msgspec.structs.replace(h, status="disabled")


async def test_unshelve_spawn_failure_rolls_back(deployment: Deployment, admin: ApiClient) -> None:
    cfg = deployment.config(conductor={"shelved_offload_time": 0})
    await deployment.start_core(cfg)
    await deployment.start_agent("good", cfg)
    await make_flavor_image(admin)
    server = await boot(deployment, admin)
    await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    # The only host left now fails every spawn.
    await deployment.store.hosts.mutate("good", _disabled)
    await deployment.start_agent(
        "bad",
        deployment.config(conductor={"shelved_offload_time": 0}, fake={"fail_steps": ["spawn"]}),
    )

    request_id = await act_id(admin, server.id, "unshelve")
    after = await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    assert after is not None and after.host is None and after.fault is not None
    assert (await last_action(deployment, server.id, request_id)).message == "Error"
    assert await allocations(deployment, server.id) == []
    bad = (await deployment.store.hosts.get("bad")).value
    assert bad.in_progress == []
    assert await audit.audit(deployment.store) == []


async def test_shelve_in_a_group_keeps_placements(deployment: Deployment, admin: ApiClient) -> None:
    await start(deployment, admin, offload=0, hosts=("h1", "h2", "h3"))
    group = await admin("server_groups.create", {"name": "g", "policy": "anti-affinity"})
    group_id = group["server_group"]["id"]
    a = await boot(deployment, admin, "a", scheduler_hints={"group": group_id})
    b = await boot(deployment, admin, "b", scheduler_hints={"group": group_id})
    assert a.host != b.host

    await act_id(admin, a.id, "shelve")
    await wait_server(deployment.store, a.id, resting(S.SHELVED_OFFLOADED))
    g = (await deployment.store.server_groups.get(group_id)).value
    assert a.id not in g.placements and g.placements[b.id] == b.host

    await act_id(admin, a.id, "unshelve")
    back = await wait_server(deployment.store, a.id, resting(S.ACTIVE))
    assert back is not None and back.host not in (None, b.host)
    g = (await deployment.store.server_groups.get(group_id)).value
    assert g.placements == {a.id: back.host, b.id: b.host}
    assert await audit.audit(deployment.store) == []


# --- a dead host: every step times out and rolls back ----------------------------------------


async def test_shelve_on_a_dead_host_times_out(deployment: Deployment, admin: ApiClient) -> None:
    agents = await start(deployment, admin, offload=0, hosts=("h1",), action_timeout=1.5)
    server = await boot(deployment, admin)
    await agents["h1"].stop()

    request_id = await act_id(admin, server.id, "shelve")
    after = await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    assert after is not None and after.host == "h1" and after.power_state == S.RUNNING
    assert after.fault is not None and "timed out" in after.fault.message
    assert (await last_action(deployment, server.id, request_id)).message == "Error"
    assert await allocations(deployment, server.id) == ["h1"]
    assert await audit.audit(deployment.store) == []


async def test_offload_on_a_dead_host_times_out(deployment: Deployment, admin: ApiClient) -> None:
    cfg = deployment.config(conductor={"shelved_offload_time": -1, "action_timeout": 1.5})
    agents = await start(deployment, admin, offload=-1, hosts=("h1",), action_timeout=1.5)
    server = await boot(deployment, admin)
    await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED))
    old = agents["h1"]
    await old.stop()

    request_id = await act_id(admin, server.id, "shelve-offload")
    after = await wait_server(deployment.store, server.id, resting(S.SHELVED))
    assert after is not None and after.host == "h1" and after.fault is not None
    assert (await last_action(deployment, server.id, request_id)).message == "Error"
    assert await allocations(deployment, server.id) == ["h1"]
    assert await audit.audit(deployment.store) == []

    # Back, the agent does not destroy the instance for the offload given up on: the
    # server is shelved there still, and unshelves there.
    back = await restart(deployment, "h1", cfg, dict(old.driver.instances))
    await work_done(deployment, "h1")
    assert back.driver.instances == {server.id: S.SHUTDOWN}
    await act_id(admin, server.id, "unshelve")
    active = await wait_server(deployment.store, server.id, resting(S.ACTIVE))
    assert active is not None and active.host == "h1"
    assert back.driver.instances == {server.id: S.RUNNING}
    assert await audit.audit(deployment.store) == []


async def test_unshelve_onto_a_dead_host_times_out(
    deployment: Deployment, admin: ApiClient
) -> None:
    agents = await start(deployment, admin, offload=0, hosts=("h1",), action_timeout=1.5)
    group = (await admin("server_groups.create", {"name": "g", "policy": "affinity"}))[
        "server_group"
    ]
    server = await boot(deployment, admin, scheduler_hints={"group": group["id"]})
    await act_id(admin, server.id, "shelve")
    await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    await agents["h1"].stop()  # its heartbeat is still recent: the scheduler takes it

    request_id = await act_id(admin, server.id, "unshelve")
    after = await wait_server(deployment.store, server.id, resting(S.SHELVED_OFFLOADED))
    assert after is not None and after.host is None
    assert after.fault is not None and "timed out" in after.fault.message
    assert (await last_action(deployment, server.id, request_id)).message == "Error"
    assert await allocations(deployment, server.id) == []
    h1 = (await deployment.store.hosts.get("h1")).value
    assert h1.in_progress == []
    g = (await deployment.store.server_groups.get(group["id"])).value
    assert g.placements == {}
    assert await audit.audit(deployment.store) == []
