"""The VMware driver against govmomi's vCenter simulator, its effects checked with pyvmomi directly.

Each test gets a fresh simulator (tests/vcsim_peer.py: two clusters of two hosts, two
datastores, two distributed port groups). The driver manages cluster DC0_C0 and verifies
the simulator's certificate through [vmware] ca_file.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pycdlib
import pytest
from pyVmomi import vim

from hvmesh.agents.driver import DriverError
from hvmesh.agents.vmware.driver import VmwareDriver
from hvmesh.agents.vmware.inventory import HYPERVISOR_TYPE
from hvmesh.agents.vmware.vm_spec import SERVER_ID_KEY
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Flavor, Server, Vif
from tests.drivers.vmware_peer import CLUSTER, IMAGE_BYTES, raw_image, vmware_config
from tests.support import until
from tests.vcsim_peer import Vcsim, find_vm

FLAVOR = Flavor(id="f1", name="m1.small", vcpus=2, ram_mb=1024, disk_gb=2)


def server(*vifs: Vif) -> Server:
    return Server(
        id=str(uuid.uuid4()), name="vm", project="demo", user="alice", flavor=FLAVOR,
        image_id="img-raw", image_name="tiny", network_info=list(vifs),
    )  # fmt: skip


def vif(n: int, physnet: str = "physnet1") -> Vif:
    return Vif(
        port_id=f"port-{n}", network_id="net", network_name="net",
        mac=f"fa:16:3e:00:00:{n:02x}", ip=f"10.0.0.{n}", cidr="10.0.0.0/24",
        physical_network=physnet,
    )  # fmt: skip


Events = list[tuple[str, int]]


@pytest.fixture
async def driver(vcsim: Vcsim, tmp_path: Path) -> AsyncIterator[tuple[VmwareDriver, Events]]:
    d = VmwareDriver("vc-c0", vmware_config(vcsim))
    d.image_cache = raw_image(tmp_path)[1]
    events: Events = []

    async def listen(server_id: str, power: int) -> None:
        events.append((server_id, power))

    d.power_listener = listen
    await d.init_host()
    try:
        yield d, events
    finally:
        await d.cleanup_host()


async def test_wrong_credentials_are_a_clear_error(vcsim: Vcsim) -> None:
    d = VmwareDriver("vc-c0", vmware_config(vcsim, password="wrong"))
    with pytest.raises(
        DriverError, match=r"refused the login of user 'hvmesh'.*username and password"
    ):
        await d.init_host()
    assert not d.healthy()
    await d.cleanup_host()


async def test_tls_is_verified_by_default(vcsim: Vcsim) -> None:
    d = VmwareDriver("vc-c0", vmware_config(vcsim, ca_file=""))
    with pytest.raises(DriverError, match=r"certificate is not trusted.*ca_file"):
        await d.init_host()
    await d.cleanup_host()
    insecure = VmwareDriver("vc-c0", vmware_config(vcsim, ca_file="", insecure=True))
    await insecure.init_host()
    assert insecure.healthy()
    await insecure.cleanup_host()


async def test_unknown_cluster_names_what_exists(vcsim: Vcsim) -> None:
    d = VmwareDriver("vc-c0", vmware_config(vcsim, cluster="nope"))
    with pytest.raises(DriverError, match=r"cluster 'nope'.*DC0_C0, DC0_C1"):
        await d.init_host()
    await d.cleanup_host()


async def test_inventory_matches_the_cluster(vcsim: Vcsim, driver) -> None:
    d, _ = driver
    inv = await d.get_inventory()
    with vcsim.session() as content:
        dc = content.rootFolder.childEntity[0]
        cluster = next(c for c in dc.hostFolder.childEntity if c.name == CLUSTER)
        threads = sum(h.summary.hardware.numCpuThreads for h in cluster.host)
        memory = sum(h.summary.hardware.memorySize for h in cluster.host) // 2**20
        disk = sum(ds.summary.capacity for ds in cluster.datastore) // 2**30
        version = content.about.version
    assert len(vcsim.model.cluster_host_names(CLUSTER)) == 2
    assert (inv.vcpus, inv.memory_mb, inv.local_gb) == (threads, memory, disk)
    assert inv.hypervisor_type == HYPERVISOR_TYPE and inv.hypervisor_version == version
    one = VmwareDriver("vc-c0", vmware_config(vcsim, datastore_regex="^LocalDS_0$"))
    await one.init_host()
    assert 0 < (await one.get_inventory()).local_gb < disk
    await one.cleanup_host()


async def test_spawn_makes_the_flavors_vm_on_the_mapped_port_groups(
    vcsim: Vcsim,
    driver,
    tmp_path: Path,
) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    s = server(vif(1), vif(2, "physnet2"))
    await d.spawn(s, image)
    await d.spawn(s, image)  # delivered again: no second VM
    assert await d.list_instances() == [s.id]
    assert (await d.get_info(s.id)).power_state == states.RUNNING
    with vcsim.session() as content:
        vm = find_vm(content, s.id)
        assert vm is not None
        assert vm.config.hardware.numCPU == 2 and vm.config.hardware.memoryMB == 1024
        tags = {o.key: o.value for o in vm.config.extraConfig}
        assert tags[SERVER_ID_KEY] == s.id
        assert vm.runtime.powerState == "poweredOn"
        assert vm.runtime.host.parent.name == CLUSTER
        nics = [x for x in vm.config.hardware.device if isinstance(x, vim.vm.device.VirtualVmxnet3)]
        networks = content.rootFolder.childEntity[0].network
        groups = {
            pg.key: pg.name
            for pg in networks
            if isinstance(pg, vim.dvs.DistributedVirtualPortgroup)
        }
        assert {(n.macAddress, groups[n.backing.port.portgroupKey]) for n in nics} == {
            ("fa:16:3e:00:00:01", "DC0_DVPG0"),
            ("fa:16:3e:00:00:02", "DC0_DVPG1"),
        }
        disks = [x for x in vm.config.hardware.device if isinstance(x, vim.vm.device.VirtualDisk)]
        assert [x.capacityInKB for x in disks] == [2 * 2**20]
        assert disks[0].backing.fileName.endswith(f"{s.id}/{s.id}.vmdk")
    # the image was uploaded once to the datastore's cache folder, and copied
    cached = list(vcsim.workdir.rglob(f"hvmesh_images/{image.checksum}-flat.vmdk"))
    assert len(cached) == 1 and cached[0].read_bytes().startswith(IMAGE_BYTES)
    await d.destroy(s.id)
    await d.destroy(s.id)  # already gone: no error
    assert await d.list_instances() == []
    with vcsim.session() as content:
        assert find_vm(content, s.id) is None


async def test_a_second_spawn_reuses_the_cached_image(vcsim: Vcsim, driver, tmp_path: Path) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    first, second = server(), server()
    await d.spawn(first, image)
    cached = next(vcsim.workdir.rglob(f"hvmesh_images/{image.checksum}-flat.vmdk"))
    before = cached.stat().st_mtime_ns
    await d.spawn(second, image)
    assert cached.stat().st_mtime_ns == before
    assert sorted(await d.list_instances()) == sorted([first.id, second.id])


async def test_images_that_are_not_raw_are_refused(driver, tmp_path: Path) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    image.disk_format = "qcow2"
    s = server()
    with pytest.raises(DriverError, match=r"is qcow2: the VMware driver boots raw images"):
        await d.spawn(s, image)
    assert await d.list_instances() == []


async def test_unmapped_physical_network_fails_spawn_and_leaves_nothing(
    driver, tmp_path: Path
) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    s = server(vif(1, "physnet9"))
    with pytest.raises(DriverError, match=r"physnet9.*physical_network_mappings"):
        await d.spawn(s, image)
    assert await d.list_instances() == []


async def test_power_actions_change_the_vm(vcsim: Vcsim, driver, tmp_path: Path) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    s = server(vif(1))
    await d.spawn(s, image)

    def power() -> str:
        with vcsim.session() as content:
            return str(find_vm(content, s.id).runtime.powerState)

    await d.power_off(s.id)
    assert power() == "poweredOff" and (await d.get_info(s.id)).power_state == states.SHUTDOWN
    await d.power_off(s.id)  # already off: no error
    await d.power_on(s)
    assert power() == "poweredOn"
    await d.suspend(s.id)
    assert power() == "suspended"
    assert (await d.get_info(s.id)).power_state == states.POWER_SUSPENDED
    await d.resume(s)
    assert power() == "poweredOn"
    await d.reboot(s, "SOFT")  # no VMware Tools in the simulator: a reset
    assert power() == "poweredOn"
    await d.power_off(s.id)
    await d.reboot(s, "HARD")
    assert power() == "poweredOn"
    with pytest.raises(DriverError, match="not SOFT or HARD"):
        await d.reboot(s, "SIDEWAYS")
    with pytest.raises(DriverError, match="not found"):
        await d.power_off(str(uuid.uuid4()))
    with pytest.raises(NotImplementedError):
        await d.pause(s.id)


async def test_attach_and_detach_interface(vcsim: Vcsim, driver, tmp_path: Path) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    s = server(vif(1))
    await d.spawn(s, image)

    def macs() -> set[str]:
        with vcsim.session() as content:
            devices = find_vm(content, s.id).config.hardware.device
            return {
                x.macAddress for x in devices if isinstance(x, vim.vm.device.VirtualEthernetCard)
            }

    extra = vif(7, "physnet2")
    await d.attach_interface(s, extra)
    await d.attach_interface(s, extra)  # already plugged in: no second card
    assert macs() == {"fa:16:3e:00:00:01", "fa:16:3e:00:00:07"}
    await d.detach_interface(s, extra)
    await d.detach_interface(s, extra)  # already gone: no error
    assert macs() == {"fa:16:3e:00:00:01"}


async def test_power_changes_made_in_vcenter_are_reported(
    vcsim: Vcsim, driver, tmp_path: Path
) -> None:
    d, events = driver
    image, _ = raw_image(tmp_path)
    s = server()
    await d.spawn(s, image)
    await until(lambda: (s.id, states.RUNNING) in events)
    with vcsim.session() as content:
        find_vm(content, s.id).PowerOffVM_Task()
    await until(lambda: events[-1] == (s.id, states.SHUTDOWN))


async def test_only_tagged_vms_are_listed_and_a_new_driver_finds_them(
    vcsim: Vcsim,
    driver,
    tmp_path: Path,
) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    s = server()
    await d.spawn(s, image)
    with vcsim.session() as content:
        dc = content.rootFolder.childEntity[0]
        cluster = next(c for c in dc.hostFolder.childEntity if c.name == CLUSTER)
        spec = vim.vm.ConfigSpec(
            name="not-ours", guestId="otherGuest64", numCPUs=1, memoryMB=64,
            files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        )  # fmt: skip
        dc.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool, host=cluster.host[0])
    again = VmwareDriver("vc-c0", vmware_config(vcsim))
    await again.init_host()
    assert await again.list_instances() == [s.id]
    other = VmwareDriver("vc-c1", vmware_config(vcsim, cluster="DC0_C1"))
    await other.init_host()
    assert await other.list_instances() == []  # another cluster's agent sees none of them
    await again.cleanup_host()
    await other.cleanup_host()


async def test_an_expired_session_logs_in_again(driver) -> None:
    d, _ = driver
    await d.session.call(lambda si: si.content.sessionManager.Logout())
    assert await d.list_instances() == []
    assert d.healthy()


async def test_a_vcenter_that_goes_away_is_unhealthy_until_it_is_back(vcsim: Vcsim, driver) -> None:
    d, _ = driver
    assert d.healthy()
    vcsim.stop()
    await until(lambda: not d.healthy())
    with pytest.raises(DriverError, match="unreachable"):
        await d.list_instances()
    vcsim.restart()
    await until(d.healthy)
    assert await d.list_instances() == []


def iso_file(data: bytes, rr_path: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=rr_path)
        return out.getvalue()
    finally:
        iso.close()


async def test_a_config_drive_is_an_iso_on_the_datastore_attached_as_a_cdrom(
    vcsim: Vcsim, driver, tmp_path: Path
) -> None:
    d, _ = driver
    image, _ = raw_image(tmp_path)
    plain = server(vif(1))
    s = msgspec.structs.replace(server(vif(2)), config_drive=True)
    await d.spawn(plain, image)
    await d.spawn(s, image)
    with vcsim.session() as content:
        devices = find_vm(content, s.id).config.hardware.device
        cdroms = [x for x in devices if isinstance(x, vim.vm.device.VirtualCdrom)]
        assert len(cdroms) == 1
        assert isinstance(cdroms[0].backing, vim.vm.device.VirtualCdrom.IsoBackingInfo)
        path = cdroms[0].backing.fileName
        other = find_vm(content, plain.id).config.hardware.device
        assert not [x for x in other if isinstance(x, vim.vm.device.VirtualCdrom)]
    assert path.endswith(f"] {s.id}/config-drive.iso"), path
    meta = json.loads(iso_file(vcsim.datastore_file(path), "/openstack/latest/meta_data.json"))
    assert meta["uuid"] == s.id
    on_disk = list(vcsim.workdir.rglob(f"{s.id}/config-drive.iso"))
    assert len(on_disk) == 1

    await d.destroy(s.id)
    assert not on_disk[0].exists()  # the ISO went with the VM
    await d.destroy(plain.id)
