"""Hyper-V through the whole path: API -> conductor -> scheduler -> agent -> WinRM -> the Hyper-V host model (tests/winrm).

Agents run the hyperv driver against hosts HV1 and HV2 of a fresh WinRM test peer, each
agent named as its Hyper-V host. What the API does is checked in the model directly:
the VM's processors, memory, switches and state after each action.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import msgspec

from hvmesh.agents.hyperv.driver import HypervDriver
from hvmesh.core.bus.connection import connect as nats_connect
from hvmesh.core.ops.launcher import make_agent
from hvmesh.core.protocol import states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Server
from hvmesh.core.state import liveness
from tests.support import (
    ApiClient,
    Cli,
    Deployment,
    act,
    gone,
    idle,
    resting,
    settled,
    until,
    wait_server,
)  # fmt: skip
from tests.winrm.hyperv import VM
from tests.winrm.peer import HypervSim

TIMEOUT = 60.0
SWITCHES = ["physnet1:External", "physnet2:Internal"]


def hyperv_section(sim: HypervSim, host: str, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1", "port": sim.host(host).port, "transport": "basic",
        "username": sim.username, "password": sim.password, "ca_file": str(sim.ca_file),
        "connection_backoff": 0.2, "connection_retries": 0, "power_poll_interval": 0.3,
        **extra,
    }  # fmt: skip


def vm_of(sim: HypervSim, server_id: str) -> VM | None:
    for host in sim.hosts.values():
        for vm in host.model.vms:
            if vm.name == server_id:
                return vm
    return None


def state_of(sim: HypervSim, server_id: str) -> str | None:
    vm = vm_of(sim, server_id)
    return None if vm is None else vm.state


async def start_hyperv(
    dep: Deployment, sim: HypervSim, hosts: tuple[str, ...] = ("HV1",), **conductor: Any
) -> Any:
    """The core services and one hyperv agent per Hyper-V host, named as the host."""
    cfg = dep.config(
        compute={"physical_network_mappings": SWITCHES},
        conductor=conductor,
        DEFAULT={"service_down_time": 3.0},
    )
    await dep.start_core(cfg)
    for host in hosts:
        nc = await nats_connect(cfg.nats, f"test-hyperv-agent-{host}")
        dep.connections.append(nc)
        agent_cfg = msgspec.structs.replace(
            cfg, hyperv=msgspec.convert(hyperv_section(sim, host), type(cfg.hyperv))
        )
        agent = make_agent(nc, agent_cfg, "hyperv", host)
        assert isinstance(agent.driver, HypervDriver)
        await dep.start(agent)
    return cfg


async def image_and_flavor(dep: Deployment, admin: ApiClient, tmp: Path) -> None:
    disk = tmp / "tiny.vhdx"
    disk.write_bytes(b"vhdxfile" + b"\0" * 4096)
    image = await Cli(dep).json(
        "image", "create", "tiny", "--file", str(disk), "--disk-format", "vhdx"
    )
    assert image["status"] == "active"
    await admin("flavors.create", {"name": "m1", "vcpus": 2, "ram_mb": 768, "disk_gb": 1})
    await admin("networks.create", {"name": "net-a", "cidr": "10.10.0.0/24"})
    await admin(
        "networks.create", {"name": "net-b", "cidr": "10.20.0.0/24", "physical_network": "physnet2"}
    )


async def test_boot_every_action_and_delete_change_the_host(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_hyperv(deployment, hyperv_sim)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    model = hyperv_sim.host("HV1").model

    host = (await store.hosts.get("HV1")).value
    assert host.driver == "hyperv" and host.hypervisor_type == "hyperv"
    assert host.inventories["VCPU"].total == model.logical_processors
    assert host.inventories["MEMORY_MB"].total == model.memory_capacity >> 20
    assert host.inventories["DISK_GB"].total == (model.volume_size - model.used_bytes()) >> 30
    assert {"COMPUTE_NET_ATTACH_INTERFACE", "COMPUTE_IMAGE_TYPE_VHDX"} <= set(host.traits)

    created = await admin(
        "servers.create",
        {
            "name": "web",
            "flavor": "m1",
            "image": "tiny",
            "networks": ["net-a"],
            "config_drive": True,
        },
    )
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
    assert server.host == "HV1"
    vm = vm_of(hyperv_sim, sid)
    assert vm is not None and (vm.processors, vm.memory, vm.state) == (2, 768 << 20, "Running")
    mac = server.network_info[0].mac.replace(":", "").upper()
    assert [(a.mac, a.switch) for a in vm.adapters] == [(mac, "External")]
    assert len(vm.dvds) == 1  # the config drive

    steps = [
        ("stop", {}, states.STOPPED, "Off"),
        ("start", {}, states.ACTIVE, "Running"),
        ("reboot", {"type": "SOFT"}, states.ACTIVE, "Running"),
        ("pause", {}, states.PAUSED, "Paused"),
        ("unpause", {}, states.ACTIVE, "Running"),
        ("suspend", {}, states.SUSPENDED, "Saved"),
        ("resume", {}, states.ACTIVE, "Running"),
        ("reboot", {"type": "HARD"}, states.ACTIVE, "Running"),
    ]
    for action, body, vm_state, hv_state in steps:
        await act(admin, sid, action, **body)
        after = await wait_server(store, sid, idle, timeout=TIMEOUT)
        assert after is not None and after.vm_state == vm_state, (action, after and after.fault)
        assert state_of(hyperv_sim, sid) == hv_state, action
    assert vm.boots == 3 and vm.resets == 1  # start, SOFT reboot, HARD reboot

    await act(admin, sid, "attach-interface", network="net-b")
    after = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert after is not None and len(after.network_info) == 2, after and after.fault
    added = after.network_info[1]
    assert [a.switch for a in vm.adapters] == ["External", "Internal"]
    await act(admin, sid, "detach-interface", port=added.port_id)
    after = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert after is not None and len(after.network_info) == 1, after and after.fault
    assert [a.mac for a in vm.adapters] == [mac]

    vm.state = "Off"  # an administrator's Stop-VM on the host, seen by the agent's poll

    def synced(s: Server | None) -> bool:
        return resting(states.STOPPED)(s) and s is not None and s.power_state == states.SHUTDOWN

    assert await wait_server(store, sid, synced, timeout=TIMEOUT) is not None

    await admin("servers.delete", {"id": sid})
    assert await wait_server(store, sid, gone, timeout=TIMEOUT) is None
    assert vm_of(hyperv_sim, sid) is None
    assert not model.exists(f"C:\\ProgramData\\hvmesh\\Instances\\{sid}")


async def test_a_name_made_of_powershell_boots_and_harms_nothing(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_hyperv(deployment, hyperv_sim)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    first = await admin("servers.create", {"name": "bystander", "flavor": "m1", "image": "tiny"})
    bystander = first["server"]["id"]
    assert (await wait_server(store, bystander, settled, timeout=TIMEOUT)).vm_state == "active"  # type: ignore[union-attr]
    await act(admin, bystander, "stop")  # an Off VM: what Remove-VM -Name * -Force removes
    await wait_server(store, bystander, resting(states.STOPPED), timeout=TIMEOUT)

    evil = "x'; Remove-VM -Name * -Force; '"
    created = await admin("servers.create", {"name": evil, "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
    assert state_of(hyperv_sim, sid) == "Running"
    assert state_of(hyperv_sim, bystander) == "Off"
    assert vm_of(hyperv_sim, sid).notes.endswith("\n" + evil)  # type: ignore[union-attr]
    assert not [p for name, p in hyperv_sim.host("HV1").calls if name == "Remove-VM"]


async def test_live_migration_moves_the_vm_to_the_other_host(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_hyperv(deployment, hyperv_sim, hosts=("HV1", "HV2"))
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    created = await admin("servers.create", {"name": "app", "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
    source = server.host
    target = "HV2" if source == "HV1" else "HV1"
    await act(admin, sid, "live-migrate", host=target)
    moved = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert moved is not None and moved.host == target, moved and moved.fault
    assert moved.vm_state == states.ACTIVE
    vm = vm_of(hyperv_sim, sid)
    assert vm is not None and vm.host == target and vm.state == "Running"
    assert all(v.name != sid for v in hyperv_sim.host(source).model.vms)


async def test_wrong_credentials_fail_the_agent_and_the_host_is_never_up(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
) -> None:
    await deployment.start_core()
    cfg_file = deployment.config_file(
        "agent", hyperv=hyperv_section(hyperv_sim, "HV1", password="wrong")
    )
    proc = deployment.spawn("agent", "--driver", "hyperv", "--host", "HV1", cfg_file=cfg_file)
    try:
        code = await asyncio.to_thread(proc.wait, TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("the agent kept running with wrong credentials") from None
    assert code != 0
    log = (deployment.tmp / "proc-0.log").read_text()
    assert "refused the credentials of user 'hvmesh'" in log and "username, password" in log
    assert deployment.store is not None
    assert await deployment.store.heartbeats.get("HV1") is None


async def test_a_host_that_drops_the_connection_is_marked_down_and_nothing_sticks(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    cfg = await start_hyperv(deployment, hyperv_sim, action_timeout=5.0)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    created = await admin("servers.create", {"name": "db", "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault

    hyperv_sim.host("HV1").stop()

    async def down() -> bool:
        at = await liveness.last_beat(store, "HV1")
        return at is not None and at < now() - cfg.DEFAULT.service_down_time

    await until(down, TIMEOUT, "the host to be marked down")

    await act(admin, sid, "stop")
    after = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert after is not None and after.task_state is None  # not stuck in powering-off
    assert after.vm_state == states.ACTIVE and after.fault is not None
    assert state_of(hyperv_sim, sid) == "Running"


async def test_a_snapshot_becomes_an_image_that_boots(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_hyperv(deployment, hyperv_sim)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    created = await admin("servers.create", {"name": "app", "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault

    reply = await act(admin, sid, "create-image", name="app-snap")
    done = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert done is not None and done.vm_state == states.ACTIVE and done.fault is None
    vm = vm_of(hyperv_sim, sid)
    assert vm is not None and vm.state == "Running" and vm.checkpoints == {}
    image = (await admin("images.get", {"id": reply["image_id"]}))["image"]
    assert (image["status"], image["disk_format"]) == ("active", "vhdx")
    assert image["size"] == len((tmp_path / "tiny.vhdx").read_bytes())

    copy = await admin("servers.create", {"name": "copy", "flavor": "m1", "image": "app-snap"})
    booted = await wait_server(store, copy["server"]["id"], settled, timeout=TIMEOUT)
    assert booted is not None and booted.vm_state == states.ACTIVE, booted and booted.fault
    assert state_of(hyperv_sim, booted.id) == "Running"


async def test_resize_in_place_confirm_and_revert(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    """[conductor] allow_resize_to_same_host: a resize stays on its host, where the driver
    sets the new processors and memory; revert gives the old ones back, confirm keeps
    the new. Without the option the only host is no candidate: no valid host."""
    await start_hyperv(deployment, hyperv_sim, allow_resize_to_same_host=True)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    await admin("flavors.create", {"name": "m2", "vcpus": 4, "ram_mb": 1536, "disk_gb": 1})
    created = await admin("servers.create", {"name": "app", "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
    host = (await store.hosts.get("HV1")).value
    assert host.inventories["VCPU"].total >= 2 + 4  # room for both flavors at once

    for finish, want in (("revert-resize", (2, 768)), ("confirm-resize", (4, 1536))):
        await act(admin, sid, "resize", flavor="m2")
        resized = await wait_server(store, sid, idle, timeout=TIMEOUT)
        assert resized is not None and resized.vm_state == states.RESIZED, resized.fault
        assert resized.host == "HV1" and resized.flavor.name == "m2"
        vm = vm_of(hyperv_sim, sid)
        assert vm is not None and (vm.processors, vm.memory >> 20, vm.state) == (4, 1536, "Running")
        # both flavors are held on the one host until the resize ends
        held = await placement_usage(store, "HV1")
        assert held["VCPU"] == 2 + 4 and held["MEMORY_MB"] == 768 + 1536

        await act(admin, sid, finish)
        done = await wait_server(store, sid, idle, timeout=TIMEOUT)
        assert done is not None and done.vm_state == states.ACTIVE, (finish, done.fault)
        vm = vm_of(hyperv_sim, sid)
        assert vm is not None and (vm.processors, vm.memory >> 20) == want, finish
        assert vm.state == "Running" and done.host == "HV1"
        assert await placement_usage(store, "HV1") == {
            "VCPU": want[0],
            "MEMORY_MB": want[1],
            "DISK_GB": 1,
        }, finish


async def placement_usage(store: Any, host: str) -> dict[str, int]:
    """What the host's allocations add up to, by resource class."""
    record = (await store.hosts.get(host)).value
    classes = {rc for alloc in record.allocations.values() for rc in alloc}
    return {rc: record.used(rc) for rc in classes if record.used(rc)}


async def test_without_same_host_resize_a_lone_host_has_no_candidate(
    hyperv_sim: HypervSim,  # first: the peer outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_hyperv(deployment, hyperv_sim)  # allow_resize_to_same_host off: Nova's default
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    await admin("flavors.create", {"name": "m2", "vcpus": 4, "ram_mb": 1536, "disk_gb": 1})
    created = await admin("servers.create", {"name": "app", "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    assert await wait_server(store, sid, settled, timeout=TIMEOUT) is not None
    await act(admin, sid, "resize", flavor="m2")
    after = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert after is not None and after.vm_state == states.ACTIVE and after.flavor.name == "m1"
    assert after.fault is not None and "No valid host" in after.fault.message
    vm = vm_of(hyperv_sim, sid)
    assert vm is not None and (vm.processors, vm.state) == (2, "Running")
