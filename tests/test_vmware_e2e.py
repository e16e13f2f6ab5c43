"""VMware through the whole path: API -> conductor -> scheduler -> agent -> govmomi's vCenter simulator.

The agent runs the vmware driver on cluster DC0_C0 of a fresh simulator
(tests/vcsim_peer.py). What the API does is checked in the simulator with pyvmomi
directly: the VM's CPU, memory and port groups, its power state after each action.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import msgspec
from pyVmomi import vim

from hvmesh.agents.vmware.driver import VmwareDriver
from hvmesh.core.bus.connection import connect as nats_connect
from hvmesh.core.ops.launcher import NodeAgents, make_agent
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
    wait_server,
)  # fmt: skip
from tests.vcsim_peer import Vcsim, find_vm

HOST = "vc-c0"
CLUSTER = "DC0_C0"
TIMEOUT = 60.0


def vmware_section(sim: Vcsim, **extra: Any) -> dict[str, Any]:
    return {
        "host": sim.host, "port": sim.port, "username": sim.username,
        "password": sim.password, "ca_file": str(sim.cert), "cluster": CLUSTER,
        "task_poll_interval": 0.05, "connection_backoff": 0.2, "connection_retries": 0,
        **extra,
    }  # fmt: skip


def power(sim: Vcsim, server_id: str) -> str | None:
    with sim.session() as content:
        vm = find_vm(content, server_id)
        return None if vm is None else str(vm.runtime.powerState)


def port_groups(sim: Vcsim, server_id: str) -> dict[str, str]:
    """{MAC: port group name} of the VM's cards, as vCenter has them."""
    with sim.session() as content:
        vm = find_vm(content, server_id)
        groups = {
            pg.key: pg.name
            for pg in content.rootFolder.childEntity[0].network
            if isinstance(pg, vim.dvs.DistributedVirtualPortgroup)
        }
        return {
            d.macAddress: groups[d.backing.port.portgroupKey]
            for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        }


async def start_vmware(
    dep: Deployment,
    sim: Vcsim,
    clusters: tuple[str, ...] = (CLUSTER,),
    per_host: bool = False,
    **conductor: Any,
) -> Any:
    """The core services and one vmware agent per cluster (host vc-c0 for DC0_C0, ...);
    `per_host`: each ESXi host of the cluster its own provider."""
    cfg = dep.config(
        vmware=vmware_section(sim, host_per_provider=per_host),
        compute={"physical_network_mappings": ["physnet1:DC0_DVPG0", "physnet2:DC0_DVPG1"]},
        conductor=conductor,
        DEFAULT={"service_down_time": 3.0},
    )
    await dep.start_core(cfg)
    for cluster in clusters:
        host = "vc-" + cluster.removeprefix("DC0_").lower()
        nc = await nats_connect(cfg.nats, f"test-vmware-agent-{host}")
        dep.connections.append(nc)
        agent_cfg = msgspec.structs.replace(
            cfg, vmware=msgspec.structs.replace(cfg.vmware, cluster=cluster)
        )
        if agent_cfg.vmware.host_per_provider:
            await dep.start(NodeAgents(nc, agent_cfg, VmwareDriver, host))
            continue
        agent = make_agent(nc, agent_cfg, "vmware", host)
        assert isinstance(agent.driver, VmwareDriver)
        await dep.start(agent)
    return cfg


async def power_off_in_vcenter_then_delete(
    sim: Vcsim, dep: Deployment, admin: ApiClient, sid: str
) -> None:
    """Power the VM off in vCenter, behind hvmesh's back: the agent's events bring the
    record to SHUTDOWN; then delete the server, and its VM is gone."""
    assert dep.store is not None
    with sim.session() as content:
        find_vm(content, sid).PowerOffVM_Task()

    def synced(s: Server | None) -> bool:
        return resting(states.STOPPED)(s) and s is not None and s.power_state == states.SHUTDOWN

    assert await wait_server(dep.store, sid, synced, timeout=TIMEOUT) is not None
    await admin("servers.delete", {"id": sid})
    assert await wait_server(dep.store, sid, gone, timeout=TIMEOUT) is None
    assert power(sim, sid) is None


async def image_and_flavor(dep: Deployment, admin: ApiClient, tmp: Path) -> None:
    raw = tmp / "tiny.raw"
    raw.write_bytes(b"\0" * 4096)
    image = await Cli(dep).json(
        "image", "create", "tiny", "--file", str(raw), "--disk-format", "raw"
    )
    assert image["status"] == "active"
    await admin("flavors.create", {"name": "m1", "vcpus": 2, "ram_mb": 768, "disk_gb": 1})
    await admin("networks.create", {"name": "net-a", "cidr": "10.10.0.0/24"})
    await admin(
        "networks.create", {"name": "net-b", "cidr": "10.20.0.0/24", "physical_network": "physnet2"}
    )


async def test_boot_and_every_action_change_the_simulator(
    vcsim: Vcsim,  # first: the simulator outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_vmware(deployment, vcsim)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)

    # inventory: the cluster's hosts as one provider
    host = (await store.hosts.get(HOST)).value
    with vcsim.session() as content:
        dc = content.rootFolder.childEntity[0]
        cluster = next(c for c in dc.hostFolder.childEntity if c.name == CLUSTER)
        threads = sum(h.summary.hardware.numCpuThreads for h in cluster.host)
        memory = sum(h.summary.hardware.memorySize for h in cluster.host) // 2**20
    assert host.driver == "vmware" and host.hypervisor_type == "VMware vCenter Server"
    assert host.inventories["VCPU"].total == threads
    assert host.inventories["MEMORY_MB"].total == memory
    assert "COMPUTE_NET_ATTACH_INTERFACE" in host.traits

    created = await admin(
        "servers.create", {"name": "web", "flavor": "m1", "image": "tiny", "networks": ["net-a"]}
    )
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
    assert server.host == HOST
    with vcsim.session() as content:
        vm = find_vm(content, sid)
        assert (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) == (2, 768)
        assert vm.runtime.powerState == "poweredOn"
    mac = server.network_info[0].mac
    assert port_groups(vcsim, sid) == {mac: "DC0_DVPG0"}

    steps = [
        ("stop", {}, states.STOPPED, "poweredOff"),
        ("start", {}, states.ACTIVE, "poweredOn"),
        ("reboot", {"type": "SOFT"}, states.ACTIVE, "poweredOn"),
        ("suspend", {}, states.SUSPENDED, "suspended"),
        ("resume", {}, states.ACTIVE, "poweredOn"),
        ("reboot", {"type": "HARD"}, states.ACTIVE, "poweredOn"),
    ]
    for action, body, vm_state, vm_power in steps:
        await act(admin, sid, action, **body)
        after = await wait_server(store, sid, idle, timeout=TIMEOUT)
        assert after is not None and after.vm_state == vm_state, (action, after and after.fault)
        assert power(vcsim, sid) == vm_power, action

    await act(admin, sid, "attach-interface", network="net-b")
    after = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert after is not None and len(after.network_info) == 2, after and after.fault
    added = after.network_info[1]
    assert port_groups(vcsim, sid) == {mac: "DC0_DVPG0", added.mac: "DC0_DVPG1"}
    await act(admin, sid, "detach-interface", port=added.port_id)
    after = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert after is not None and len(after.network_info) == 1, after and after.fault
    assert port_groups(vcsim, sid) == {mac: "DC0_DVPG0"}

    # a power-off made in vCenter reaches the server record through the agent's events
    await power_off_in_vcenter_then_delete(vcsim, deployment, admin, sid)


async def test_wrong_credentials_fail_the_agent_and_the_host_is_never_up(
    vcsim: Vcsim,  # first: the simulator outlives the deployment's agents
    deployment: Deployment,
) -> None:
    await deployment.start_core()
    cfg_file = deployment.config_file("agent", vmware=vmware_section(vcsim, password="wrong"))
    proc = deployment.spawn("agent", "--driver", "vmware", "--host", HOST, cfg_file=cfg_file)
    try:
        code = await asyncio.to_thread(proc.wait, TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("the agent kept running with wrong credentials") from None
    assert code != 0
    log = (deployment.tmp / "proc-0.log").read_text()
    assert "refused the login of user 'hvmesh'" in log and "username and password" in log
    assert deployment.store is not None
    assert await deployment.store.heartbeats.get(HOST) is None


async def test_a_simulator_stopped_mid_run_marks_the_host_down_and_nothing_sticks(
    vcsim: Vcsim,  # first: the simulator outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    cfg = await start_vmware(deployment, vcsim, action_timeout=5.0)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    created = await admin("servers.create", {"name": "db", "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault

    vcsim.stop()
    async with asyncio.timeout(TIMEOUT):  # heartbeats stop: the host goes down
        while True:
            at = await liveness.last_beat(store, HOST)
            if at is not None and at < now() - cfg.DEFAULT.service_down_time:
                break
            await asyncio.sleep(0.2)  # noqa: sleep (staleness is a clock condition: polled)

    await act(admin, sid, "stop")
    after = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert after is not None and after.task_state is None  # not stuck in powering-off
    assert after.vm_state == states.ACTIVE and after.fault is not None


def vm_in(sim: Vcsim, name: str) -> tuple[str, int, int] | None:
    """(cluster, CPUs, memory MB) of the VM called `name`; None when there is none."""
    with sim.session() as content:
        vm = find_vm(content, name)
        if vm is None:
            return None
        pool = vm.resourcePool
        while not isinstance(pool.parent, vim.ComputeResource):
            pool = pool.parent
        hw = vm.config.hardware
        return pool.parent.name, hw.numCPU, hw.memoryMB


async def test_resize_moves_the_vm_to_the_other_cluster(
    vcsim: Vcsim,  # first: the simulator outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_vmware(deployment, vcsim, clusters=("DC0_C0", "DC0_C1"))
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    await image_and_flavor(deployment, admin, tmp_path)
    await admin("flavors.create", {"name": "m2", "vcpus": 4, "ram_mb": 1536, "disk_gb": 2})
    created = await admin("servers.create", {"name": "app", "flavor": "m1", "image": "tiny"})
    sid = created["server"]["id"]
    server = await wait_server(store, sid, settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
    source = server.host
    cluster_of = {"vc-c0": "DC0_C0", "vc-c1": "DC0_C1"}
    assert vm_in(vcsim, sid) == (cluster_of[source], 2, 768)

    await act(admin, sid, "resize", flavor="m2")
    resized = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert resized is not None and resized.vm_state == states.RESIZED, resized and resized.fault
    assert resized.host != source
    assert vm_in(vcsim, sid) == (cluster_of[resized.host], 4, 1536)
    assert power(vcsim, sid) == "poweredOn"
    assert vm_in(vcsim, sid + "-orig") == (cluster_of[source], 2, 768)  # kept for a revert

    await act(admin, sid, "confirm-resize")
    confirmed = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert confirmed is not None and confirmed.vm_state == states.ACTIVE, confirmed.fault
    assert vm_in(vcsim, sid + "-orig") is None
    assert vm_in(vcsim, sid) == (cluster_of[confirmed.host], 4, 1536)


def esx_host_of(sim: Vcsim, server_id: str) -> str | None:
    """The name of the ESXi host the server's VM runs on, as vCenter has it."""
    with sim.session() as content:
        vm = find_vm(content, server_id)
        return None if vm is None or vm.runtime.host is None else str(vm.runtime.host.name)


async def boot_one(dep: Deployment, admin: ApiClient, tmp: Path) -> Server:
    assert dep.store is not None
    await image_and_flavor(dep, admin, tmp)
    created = await admin("servers.create", {"name": "app", "flavor": "m1", "image": "tiny"})
    server = await wait_server(dep.store, created["server"]["id"], settled, timeout=TIMEOUT)
    assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
    return server


async def test_live_migration_moves_the_running_vm_to_the_other_cluster(
    vcsim: Vcsim,  # first: the simulator outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    await start_vmware(deployment, vcsim, clusters=("DC0_C0", "DC0_C1"))
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    server = await boot_one(deployment, admin, tmp_path)
    sid, source = server.id, server.host
    cluster_of = {"vc-c0": "DC0_C0", "vc-c1": "DC0_C1"}

    await act(admin, sid, "live-migrate")
    moved = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert moved is not None and moved.vm_state == states.ACTIVE, moved and moved.fault
    assert moved.host != source
    assert vm_in(vcsim, sid) == (cluster_of[moved.host], 2, 768)
    assert power(vcsim, sid) == "poweredOn"  # never stopped: vMotion moves it running
    assert (esx_host_of(vcsim, sid) or "").startswith(cluster_of[moved.host])
    with vcsim.session() as content:  # the destination's mark is cleared
        extra = {o.key: o.value for o in find_vm(content, sid).config.extraConfig}
        assert not extra.get("hvmesh.live_target")

    # the destination's agent answers for it now: its power events reach the record
    await power_off_in_vcenter_then_delete(vcsim, deployment, admin, sid)


async def test_each_esx_host_can_be_its_own_provider(
    vcsim: Vcsim,  # first: the simulator outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    """[vmware] host_per_provider: one agent, one provider per ESXi host of its cluster;
    servers land on a named host, and move live and cold between the hosts."""
    await start_vmware(deployment, vcsim, per_host=True)
    store = deployment.store
    assert store is not None
    with vcsim.session() as content:
        dc = content.rootFolder.childEntity[0]
        cluster = next(c for c in dc.hostFolder.childEntity if c.name == CLUSTER)
        esx = {
            h.name: (h.summary.hardware.numCpuThreads, h.summary.hardware.memorySize // 2**20)
            for h in cluster.host
        }
    assert len(esx) == 2
    for name, (threads, memory) in esx.items():
        record = (await store.hosts.get(name)).value
        assert record.driver == "vmware"
        assert (record.inventories["VCPU"].total, record.inventories["MEMORY_MB"].total) == (
            threads,
            memory,
        )
    admin = ApiClient(await deployment.connect("admin"))
    server = await boot_one(deployment, admin, tmp_path)
    sid = server.id
    assert server.host in esx and esx_host_of(vcsim, sid) == server.host

    other = next(h for h in esx if h != server.host)
    await act(admin, sid, "live-migrate", host=other)
    moved = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert moved is not None and moved.vm_state == states.ACTIVE, moved and moved.fault
    assert moved.host == other and esx_host_of(vcsim, sid) == other
    assert power(vcsim, sid) == "poweredOn"

    await act(admin, sid, "migrate")  # cold, back to the first host: the only other one
    resized = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert resized is not None and resized.vm_state == states.RESIZED, resized and resized.fault
    assert resized.host == server.host and esx_host_of(vcsim, sid) == server.host
    await act(admin, sid, "confirm-resize")
    confirmed = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert confirmed is not None and confirmed.vm_state == states.ACTIVE, confirmed.fault
    assert vm_in(vcsim, sid + "-orig") is None

    await admin("servers.delete", {"id": sid})
    assert await wait_server(store, sid, gone, timeout=TIMEOUT) is None
    assert power(vcsim, sid) is None


async def test_console_log_and_snapshot_through_the_api(
    vcsim: Vcsim,  # first: the simulator outlives the deployment's agents
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    """The console log is what the VM's serial port wrote to its datastore folder; a
    snapshot is the root disk's bytes as a raw image, which boots another server."""
    await start_vmware(deployment, vcsim)
    store = deployment.store
    assert store is not None
    admin = ApiClient(await deployment.connect("admin"))
    server = await boot_one(deployment, admin, tmp_path)
    sid = server.id
    with vcsim.session() as content:
        devices = find_vm(content, sid).config.hardware.device
        ports = [d for d in devices if isinstance(d, vim.vm.device.VirtualSerialPort)]
        [disk] = [d.backing.fileName for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    assert len(ports) == 1  # writing to a file in the VM's folder, by its disk
    log_path = str(ports[0].backing.fileName)
    assert log_path == disk.rsplit("/", 1)[0] + "/console.log"
    assert (await act(admin, sid, "console-log"))["output"] == ""  # nothing written yet
    # what ESXi writes for the guest's serial port, written here the same way
    vcsim.datastore_file(log_path, b"boot: ok\nlogin: root\nhello from the guest\n")
    reply = await act(admin, sid, "console-log", length=2)
    assert reply["output"].splitlines() == ["login: root", "hello from the guest"]

    reply = await act(admin, sid, "create-image", name="app-snap")
    done = await wait_server(store, sid, idle, timeout=TIMEOUT)
    assert done is not None and done.vm_state == states.ACTIVE and done.fault is None
    assert power(vcsim, sid) == "poweredOn"  # kept running
    image = (await admin("images.get", {"id": reply["image_id"]}))["image"]
    assert (image["status"], image["disk_format"]) == ("active", "raw")
    assert image["size"] == len(vcsim.datastore_file(disk.removesuffix(".vmdk") + "-flat.vmdk"))
    with vcsim.session() as content:  # the snapshot that held the disk is gone
        assert list(find_vm(content, sid).rootSnapshot) == []

    created = await admin(
        "servers.create", {"name": "copy", "flavor": "m1", "image": reply["image_id"]}
    )
    copy = await wait_server(store, created["server"]["id"], settled, timeout=TIMEOUT)
    assert copy is not None and copy.vm_state == states.ACTIVE, copy and copy.fault
    assert power(vcsim, copy.id) == "poweredOn"
