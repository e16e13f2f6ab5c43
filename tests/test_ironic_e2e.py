"""Ironic through the whole path: API -> conductor -> scheduler -> agent -> a real standalone Ironic with fake hardware.

One agent fronts the Ironic of tests/ironic_peer.py; each node is a host named by its
uuid. What the API does is checked in Ironic through its own HTTP API: the node's
provision and power states, its instance_uuid and instance_info.
"""

from __future__ import annotations

from typing import Any

import pytest

from hvmesh.agents.ironic.driver import IronicDriver
from hvmesh.core.bus.connection import connect as nats_connect
from hvmesh.core.ops.launcher import NodeAgents
from hvmesh.core.protocol import errors, states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Host, Server
from hvmesh.core.state import liveness
from hvmesh.core.state.store import Store
from tests.drivers.ironic_peer import GOLD_SPECS
from tests.ironic_peer import Ironic
from tests.support import ApiClient, Deployment, act, gone, idle, settled, until, wait_server

TIMEOUT = 90.0
GOLD = "CUSTOM_BAREMETAL_GOLD"


def ironic_section(ironic: Ironic, **extra: Any) -> dict[str, Any]:
    return {"api_url": ironic.endpoint, "auth_type": "none", "poll_interval": 0.1, **extra}


async def start_ironic_agent(dep: Deployment, ironic: Ironic, **conductor: Any) -> Any:
    """The core services and one agent fronting every node of `ironic`."""
    cfg = dep.config(
        ironic=ironic_section(ironic),
        conductor=conductor,
        DEFAULT={"service_down_time": 3.0},
        compute={"reserved_host_memory_mb": 0, "reserved_host_disk_gb": 0},
    )
    await dep.start_core(cfg)
    nc = await nats_connect(cfg.nats, "test-ironic-agent")
    dep.connections.append(nc)
    await dep.start(NodeAgents(nc, cfg, IronicDriver, "ironic-agent"))
    return cfg


def store_of(dep: Deployment) -> Store:
    assert dep.store is not None
    return dep.store


async def host(dep: Deployment, name: str) -> Host:
    entry = await store_of(dep).hosts.get(name)
    assert entry is not None, f"no host record {name}"
    return entry.value


async def gold_units(dep: Deployment, name: str) -> int:
    inv = (await host(dep, name)).inventories.get(GOLD)
    return inv.total - inv.reserved if inv is not None else 0


async def flavors_and_image(admin: ApiClient) -> None:
    # Nova's bare-metal flavor: its real size for show, and resources: asking for one
    # unit of the node's class and none of the standard classes.
    await admin(
        "flavors.create",
        {"name": "bm.gold", "vcpus": 8, "ram_mb": 16384, "disk_gb": 10, "extra_specs": GOLD_SPECS},
    )
    await admin("flavors.create", {"name": "m1", "vcpus": 1, "ram_mb": 512, "disk_gb": 1})
    await admin("images.create", {"name": "bm-image", "disk_format": "raw"})


async def boot(admin: ApiClient, dep: Deployment, name: str, flavor: str = "bm.gold") -> Server:
    created = await admin("servers.create", {"name": name, "flavor": flavor, "image": "bm-image"})
    server = await wait_server(store_of(dep), created["server"]["id"], settled, timeout=TIMEOUT)
    assert server is not None
    return server


async def test_nodes_are_hosts_and_a_baremetal_flavor_deploys_one(
    ironic: Ironic,  # first: Ironic outlives the deployment's agents
    deployment: Deployment,
) -> None:
    gold = ironic.enroll(traits=("CUSTOM_RAID",))
    silver = ironic.enroll("baremetal-silver")
    enrolled = ironic.enroll(available=False)  # not yet available: not schedulable
    await start_ironic_agent(deployment, ironic)
    admin = ApiClient(await deployment.connect("admin"))
    await flavors_and_image(admin)

    record = await host(deployment, gold)
    assert record.driver == "ironic" and record.hypervisor_type == "ironic"
    assert record.inventories[GOLD].total == 1 and record.inventories["VCPU"].total == 0
    assert "CUSTOM_RAID" in record.traits
    assert "CUSTOM_HVMESH_SUPPORTS_LIVE_MIGRATION" not in record.traits
    assert (await host(deployment, silver)).inventories["CUSTOM_BAREMETAL_SILVER"].total == 1
    assert await gold_units(deployment, enrolled) == 0

    # A VM flavor asks for VCPU: no bare-metal node has any.
    vm = await boot(admin, deployment, "vm", flavor="m1")
    assert vm.vm_state == states.ERROR and "No valid host" in str(vm.fault), vm.fault

    server = await boot(admin, deployment, "metal")
    sid = server.id
    assert server.vm_state == states.ACTIVE, server.fault
    assert server.host == gold and server.power_state == states.RUNNING
    node = ironic.node(gold)
    assert (node["provision_state"], node["power_state"]) == ("active", "power on")
    assert node["instance_uuid"] == sid
    assert node["instance_info"]["hvmesh_server_id"] == sid
    assert node["instance_info"]["image_source"] == server.image_id
    assert node["instance_info"]["root_gb"] == "10"
    allocations = (await host(deployment, gold)).allocations[sid]
    assert allocations == {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0, GOLD: 1}

    for action, body, vm_state, node_power in [
        ("stop", {}, states.STOPPED, "power off"),
        ("start", {}, states.ACTIVE, "power on"),
        ("reboot", {"type": "SOFT"}, states.ACTIVE, "power on"),
        ("reboot", {"type": "HARD"}, states.ACTIVE, "power on"),
    ]:
        await act(admin, sid, action, **body)
        after = await wait_server(store_of(deployment), sid, idle, timeout=TIMEOUT)
        assert after is not None and after.vm_state == vm_state, (action, after and after.fault)
        assert ironic.node(gold)["power_state"] == node_power, action

    # What bare metal cannot do: refused by the API with a 409 naming the capability the
    # driver lacks, and nothing changes.
    before = await store_of(deployment).servers.get(sid)
    for action, body, capability in [
        ("live-migrate", {}, "supports_live_migration"),
        ("pause", {}, "supports_pause"),
        ("suspend", {}, "supports_suspend"),
        ("resize", {"flavor": "m1"}, "supports_resize"),
        ("migrate", {}, "supports_resize"),
        ("create-image", {"name": "metal-snap"}, "supports_snapshot"),
    ]:
        with pytest.raises(errors.Conflict, match=capability) as refused:
            await act(admin, sid, action, **body)
        assert refused.value.code == 409 and action in refused.value.message
    assert await store_of(deployment).servers.get(sid) == before

    # The one gold node is taken: a second gold server finds no host.
    second = await boot(admin, deployment, "metal-2")
    assert second.vm_state == states.ERROR and "No valid host" in str(second.fault)

    await admin("servers.delete", {"id": sid})
    assert await wait_server(store_of(deployment), sid, gone, timeout=TIMEOUT) is None
    node = ironic.node(gold)
    assert node["provision_state"] == "available" and node["instance_uuid"] is None
    assert sid not in (await host(deployment, gold)).allocations


def deploy_interface(ironic: Ironic, node: str, interface: str) -> None:
    """custom-agent: deploys fail (no ramdisk agent); fake: they work."""
    patch = [{"op": "replace", "path": "/deploy_interface", "value": interface}]
    ironic.request("PATCH", f"/v1/nodes/{node}", patch)


async def test_a_failed_deploy_reschedules_to_another_node(
    ironic: Ironic,  # first: Ironic outlives the deployment's agents
    deployment: Deployment,
) -> None:
    """A node whose deploy fails in Ironic ("deploy failed") is undeployed and the server
    lands on another node. Which node is tried first is made certain with the
    BuildFailureWeigher: the other node gets a failed build of its own beforehand."""
    first, other = ironic.enroll(), ironic.enroll(failing=True)
    await start_ironic_agent(deployment, ironic, max_attempts=3)
    admin = ApiClient(await deployment.connect("admin"))
    await flavors_and_image(admin)

    async def units(node: str, want: int) -> bool:
        return await gold_units(deployment, node) == want

    # `other` fails a deploy while it is the only node: no other host, so ERROR.
    ironic.set_maintenance(first, True)
    await until(lambda: units(first, 0), TIMEOUT, "the node in maintenance to leave")
    lone = await boot(admin, deployment, "lone")
    assert lone.vm_state == states.ERROR and "No valid host" in str(lone.fault), lone.fault
    assert other in lone.retry_hosts and (await host(deployment, other)).failed_builds == 1
    ironic.wait_state(other, "available")  # undeployed after its failure
    await admin("servers.delete", {"id": lone.id})
    assert await wait_server(store_of(deployment), lone.id, gone, timeout=TIMEOUT) is None

    # Now `first` fails and `other` works: the server goes to `first` (no failures yet),
    # fails there, and is rescheduled to `other`.
    deploy_interface(ironic, other, "fake")
    deploy_interface(ironic, first, "custom-agent")
    ironic.set_maintenance(first, False)
    await until(lambda: units(first, 1), TIMEOUT, "the node back from maintenance")
    server = await boot(admin, deployment, "metal")
    assert server.vm_state == states.ACTIVE, server.fault
    assert server.host == other and server.retry_hosts == [first], server
    assert ironic.node(other)["instance_uuid"] == server.id
    failed = ironic.wait_state(first, "available")  # undeployed after its failure
    assert failed["instance_uuid"] is None
    assert server.id not in (await host(deployment, first)).allocations


async def test_a_node_in_maintenance_is_not_scheduled(
    ironic: Ironic,  # first: Ironic outlives the deployment's agents
    deployment: Deployment,
) -> None:
    node = ironic.enroll()
    await start_ironic_agent(deployment, ironic)
    admin = ApiClient(await deployment.connect("admin"))
    await flavors_and_image(admin)
    assert await gold_units(deployment, node) == 1

    async def no_gold() -> bool:
        return await gold_units(deployment, node) == 0

    ironic.set_maintenance(node, True)  # in Ironic: the agent's listing notices
    await until(no_gold, TIMEOUT, "the node's class to go away")
    refused = await boot(admin, deployment, "metal")
    assert refused.vm_state == states.ERROR and "No valid host" in str(refused.fault)
    assert ironic.node(node)["provision_state"] == "available"

    ironic.set_maintenance(node, False)
    await until(lambda: gold_units(deployment, node), TIMEOUT, "the node's class to come back")
    server = await boot(admin, deployment, "metal-2")
    assert server.vm_state == states.ACTIVE and server.host == node, server.fault


async def test_ironic_going_away_marks_the_hosts_down_and_nothing_sticks(
    ironic: Ironic,  # first: Ironic outlives the deployment's agents
    deployment: Deployment,
) -> None:
    nodes = [ironic.enroll(), ironic.enroll()]
    cfg = await start_ironic_agent(deployment, ironic, action_timeout=5.0)
    admin = ApiClient(await deployment.connect("admin"))
    await flavors_and_image(admin)
    server = await boot(admin, deployment, "metal")
    assert server.vm_state == states.ACTIVE, server.fault
    store = store_of(deployment)

    ironic.stop()

    async def down() -> bool:
        for name in nodes:
            at = await liveness.last_beat(store, name)
            if at is None or at >= now() - cfg.DEFAULT.service_down_time:
                return False
        return True

    await until(down, TIMEOUT, "every node's host to stop heartbeating")
    await act(admin, server.id, "stop")
    after = await wait_server(store, server.id, idle, timeout=TIMEOUT)
    assert after is not None and after.task_state is None  # not stuck in powering-off
    assert after.vm_state == states.ACTIVE and after.fault is not None
    # A new server finds no host up; it ends in ERROR, not scheduling forever.
    refused = await boot(admin, deployment, "metal-2")
    assert refused.vm_state == states.ERROR and refused.task_state is None

    ironic.start()  # back on the same port and database: the hosts heartbeat again
    await until(lambda: _all_up(store, nodes, cfg), TIMEOUT, "the hosts to be up again")
    node = ironic.node(server.host or "")
    assert node["provision_state"] == "active" and node["instance_uuid"] == server.id


async def _all_up(store: Store, names: list[str], cfg: Any) -> bool:
    for name in names:
        if not await liveness.is_up(store, name, cfg.DEFAULT.service_down_time):
            return False
    return True
