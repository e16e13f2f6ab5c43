"""The libvirt driver against libvirt's own test driver (test:///<node file>).

The test driver is libvirt in-process with a hypervisor that changes state at once and
checks no resources; each test describes its own host in a node XML file (CPUs,
memory, a directory storage pool under tmp_path, PCI devices). Its domains, pools and
volumes are real libvirt objects with real lifecycle events; it keeps volumes in memory
and writes no files, and it has no device hot-plug, storage streams or migration (see
the tests that say so).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import msgspec
import pytest

from hvmesh.agents.driver import DriverError
from hvmesh.agents.libvirt import disks
from hvmesh.agents.libvirt.domain_xml import domain_name
from hvmesh.agents.libvirt.driver import LibvirtDriver
from hvmesh.core.config import Config
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Flavor, Image, Server, Vif
from hvmesh.core.protocol.resources import pci_class

NODE = """<node>
  <cpu>
    <mhz>2000</mhz><model>x86_64</model><active>8</active>
    <nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads>
  </cpu>
  <memory>16777216</memory>
  {pool}
  <device>
    <name>pci_0000_03_00_0</name><parent>computer</parent>
    <capability type='pci'>
      <domain>0</domain><bus>3</bus><slot>0</slot><function>0</function>
      <product id='0x1eb8'>T4</product><vendor id='0x10de'>NVIDIA</vendor>
    </capability>
  </device>
  <device>
    <name>pci_0000_04_00_0</name><parent>computer</parent>
    <capability type='pci'>
      <domain>0</domain><bus>4</bus><slot>0</slot><function>0</function>
      <product id='0x1eb8'>T4</product><vendor id='0x10de'>NVIDIA</vendor>
    </capability>
  </device>
</node>
"""

POOL = """<pool type='dir'>
    <name>hvmesh</name>
    <capacity unit='GiB'>200</capacity><allocation unit='GiB'>0</allocation>
    <available unit='GiB'>200</available>
    <source/><target><path>{path}</path></target>
  </pool>"""

TIMEOUT = 10.0


class LocalImages:
    """A stand-in for the agent's image cache (which fetches from a NATS object store):
    each image is a small real file written here, returned by path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fetched: list[str] = []

    def _file(self, image_id: str, fmt: str = "raw") -> Path:
        path = self.root / f"{image_id}.{fmt}"
        if not path.exists():
            if fmt == "qcow2":
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True
                )
            else:
                path.write_bytes(b"\0" * 1024 * 1024)
        self.fetched.append(image_id)
        return path

    async def fetch(self, image: Image) -> Path:
        return self._file(image.id, image.disk_format)

    async def fetch_id(self, image_id: str) -> Path:
        return self._file(image_id)


class Events:
    """The driver's power listener: every (server id, power state) it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, server_id: str, power: int) -> None:
        async with self._changed:
            self.seen.append((server_id, power))
            self._changed.notify_all()

    async def wait_for(self, server_id: str, power: int) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: (server_id, power) in self.seen), TIMEOUT
            )


def write_node(tmp_path: Path, with_pool: bool = True) -> Path:
    disks_dir = tmp_path / "disks"
    disks_dir.mkdir(exist_ok=True)
    node = tmp_path / "node.xml"
    pool = POOL.format(path=disks_dir) if with_pool else ""
    node.write_text(NODE.format(pool=pool))
    return node


def make_config(tmp_path: Path, node: Path) -> Config:
    cfg = Config()
    cfg.libvirt.uri = f"test://{node}"
    cfg.libvirt.virt_type = "qemu"
    cfg.libvirt.storage_pool_path = str(tmp_path / "disks")
    cfg.libvirt.console_log_dir = str(tmp_path / "console")
    cfg.libvirt.instances_path = str(tmp_path / "instances")
    cfg.libvirt.reconnect_max_delay = 0.2
    cfg.libvirt.shutdown_timeout = 5.0
    cfg.libvirt.pci_alias = ["gpu:10de:1eb8"]
    cfg.compute.physical_network_mappings = ["physnet1:br0"]
    return cfg


@pytest.fixture
async def driver(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, write_node(tmp_path))
    drv = LibvirtDriver("host1", cfg)
    drv.image_cache = LocalImages(tmp_path / "images")
    (tmp_path / "images").mkdir()
    drv.power_listener = Events()
    await drv.init_host()
    yield drv
    await drv.cleanup_host()


def events(drv: LibvirtDriver) -> Events:
    assert isinstance(drv.power_listener, Events)
    return drv.power_listener


def image(image_id: str = "img-1", fmt: str = "raw", **props: str) -> Image:
    return Image(id=image_id, name=image_id, disk_format=fmt, properties=props, checksum=None)


def vif(n: int, physnet: str = "physnet1") -> Vif:
    return Vif(
        port_id=f"port-{n}",
        network_id="net",
        network_name="net",
        mac=f"fa:16:3e:00:00:0{n}",
        ip=f"10.0.0.{n + 10}",
        cidr="10.0.0.0/24",
        physical_network=physnet,
    )


def server(disk_gb: int = 1, vifs: list[Vif] | None = None, **specs: str) -> Server:
    return Server(
        id=str(uuid.uuid4()),
        name="vm",
        project="demo",
        user="alice",
        flavor=Flavor(id="f1", name="m1", vcpus=2, ram_mb=512, disk_gb=disk_gb, extra_specs=specs),
        image_id="img-1",
        image_name="img-1",
        network_info=[vif(1)] if vifs is None else vifs,
    )


def domain(drv: LibvirtDriver, server_id: str) -> libvirt.virDomain:
    return drv.connection.get().lookupByName(domain_name(server_id))


def volume_names(drv: LibvirtDriver) -> list[str]:
    pool = drv.connection.get().storagePoolLookupByName("hvmesh")
    return sorted(v.name() for v in pool.listAllVolumes(0))


async def power(drv: LibvirtDriver, server_id: str) -> int:
    return (await drv.get_info(server_id)).power_state


async def test_spawn_runs_and_lists(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image())
    assert await driver.list_instances() == [s.id]
    assert await power(driver, s.id) == states.RUNNING
    await events(driver).wait_for(s.id, states.RUNNING)
    assert volume_names(driver) == [f"{s.id}-root"]
    vol = (
        driver.connection.get()
        .storagePoolLookupByName("hvmesh")
        .storageVolLookupByName(f"{s.id}-root")
    )
    desc = ET.fromstring(vol.XMLDesc(0))
    assert desc.find("backingStore/format").get("type") == "raw"
    assert desc.findtext("backingStore/path", "").endswith("img-1.raw")
    assert vol.info()[1] == disks.GIB
    root = ET.fromstring(domain(driver, s.id).XMLDesc(0))
    assert root.findtext("uuid") == s.id
    assert root.find("devices/disk/source").get("file") == vol.path()

    # Spawning again leaves the running instance as it is.
    await driver.spawn(s, image())
    assert await driver.list_instances() == [s.id]
    assert await power(driver, s.id) == states.RUNNING


async def test_spawn_disk_size_from_image_when_flavor_has_none(driver: LibvirtDriver) -> None:
    s = server(disk_gb=0)
    await driver.spawn(s, image("img-q", fmt="qcow2"))
    pool = driver.connection.get().storagePoolLookupByName("hvmesh")
    vol = pool.storageVolLookupByName(f"{s.id}-root")
    assert vol.info()[1] == 64 * 1024 * 1024
    assert ET.fromstring(vol.XMLDesc(0)).find("backingStore/format").get("type") == "qcow2"


async def test_spawn_without_image_or_with_unmapped_network_fails_clean(
    driver: LibvirtDriver,
) -> None:
    with pytest.raises(DriverError, match="boots from an image"):
        await driver.spawn(server(), None)
    s = server(vifs=[vif(1), vif(2, physnet="physnet7")])
    with pytest.raises(DriverError, match="physical network 'physnet7'"):
        await driver.spawn(s, image())
    assert await driver.list_instances() == []
    assert volume_names(driver) == []  # the root volume made before the failure is gone


async def test_power_off_and_on(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image())
    await driver.power_off(s.id)
    assert await power(driver, s.id) == states.SHUTDOWN
    await events(driver).wait_for(s.id, states.SHUTDOWN)
    await driver.power_off(s.id)  # already off: nothing to do
    await driver.power_on(s)
    assert await power(driver, s.id) == states.RUNNING


async def test_reboots(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image())
    await driver.reboot(s, "SOFT")
    assert await power(driver, s.id) == states.RUNNING
    before = len(events(driver).seen)
    await driver.reboot(s, "HARD")
    assert await power(driver, s.id) == states.RUNNING
    await events(driver).wait_for(s.id, states.SHUTDOWN)  # the hard stop, then a start
    assert len(events(driver).seen) > before
    await driver.power_off(s.id)
    await driver.reboot(s, "SOFT")  # a stopped guest cannot reboot itself: started hard
    assert await power(driver, s.id) == states.RUNNING
    with pytest.raises(DriverError, match="'WARM'"):
        await driver.reboot(s, "WARM")


async def test_pause_suspend_resume(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image())
    await driver.pause(s.id)
    assert await power(driver, s.id) == states.POWER_PAUSED
    await events(driver).wait_for(s.id, states.POWER_PAUSED)
    await driver.unpause(s.id)
    assert await power(driver, s.id) == states.RUNNING
    await driver.suspend(s.id)
    assert await power(driver, s.id) == states.POWER_SUSPENDED
    await events(driver).wait_for(s.id, states.POWER_SUSPENDED)
    assert domain(driver, s.id).hasManagedSaveImage(0)
    await driver.resume(s)
    assert await power(driver, s.id) == states.RUNNING
    assert not domain(driver, s.id).hasManagedSaveImage(0)


async def test_destroy_removes_domain_and_volumes(driver: LibvirtDriver, tmp_path: Path) -> None:
    s, other = server(), server()
    await driver.spawn(s, image())
    await driver.spawn(other, image())
    await driver.suspend(s.id)  # a managed save image goes with it
    await driver.destroy(s.id)
    assert await driver.list_instances() == [other.id]
    assert volume_names(driver) == [f"{other.id}-root"]
    with pytest.raises(DriverError, match="not found"):
        await driver.get_info(s.id)
    await driver.destroy(s.id)  # already gone: no error


async def test_rebuild_new_root_same_domain(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image("img-1"))
    before = domain(driver, s.id).UUIDString()
    await driver.rebuild(s, image("img-2", os_command_line="quiet", hw_vif_model="e1000"))
    assert domain(driver, s.id).UUIDString() == before
    assert await power(driver, s.id) == states.RUNNING
    pool = driver.connection.get().storagePoolLookupByName("hvmesh")
    vol = pool.storageVolLookupByName(f"{s.id}-root")
    assert ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path", "").endswith("img-2.raw")
    root = ET.fromstring(domain(driver, s.id).XMLDesc(0))
    assert root.find("devices/interface/model").get("type") == "e1000"


async def test_direct_kernel_boot(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image(kernel_id="k-1", ramdisk_id="r-1"))
    root = ET.fromstring(domain(driver, s.id).XMLDesc(0))
    assert root.findtext("os/kernel", "").endswith("k-1.raw")
    assert root.findtext("os/initrd", "").endswith("r-1.raw")
    assert root.findtext("os/cmdline") == "console=ttyS0"


async def test_interfaces_on_a_stopped_guest(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image())
    await driver.power_off(s.id)

    def macs() -> list[str]:
        root = ET.fromstring(domain(driver, s.id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        return [m.get("address", "") for m in root.iterfind("devices/interface/mac")]

    await driver.attach_interface(s, vif(2))
    await driver.attach_interface(s, vif(2))  # already there: nothing changes
    assert macs() == ["fa:16:3e:00:00:01", "fa:16:3e:00:00:02"]
    await driver.detach_interface(s, vif(1))
    await driver.detach_interface(s, vif(1))  # already gone: no error
    assert macs() == ["fa:16:3e:00:00:02"]
    with pytest.raises(DriverError, match="physical network 'physnet3'"):
        await driver.attach_interface(s, vif(3, physnet="physnet3"))


async def test_hot_plug_refusal_is_reported(driver: LibvirtDriver) -> None:
    # The test driver cannot hot-plug (no virDomainAttachDeviceFlags): the call on a
    # running guest must fail with libvirt's reason, not pretend it worked.
    s = server()
    await driver.spawn(s, image())
    with pytest.raises(DriverError, match="attaching port port-2"):
        await driver.attach_interface(s, vif(2))


async def test_console_output_reads_the_log(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image())
    assert await driver.get_console_output(s.id) == ""  # nothing written yet
    # The test driver runs no guest: write what a guest's serial console would.
    driver.console_log(s.id).write_text("login: \n")
    assert await driver.get_console_output(s.id) == "login: \n"
    with pytest.raises(DriverError, match="not found"):
        await driver.get_console_output(str(uuid.uuid4()))


async def test_snapshot_writes_a_standalone_image(driver: LibvirtDriver, tmp_path: Path) -> None:
    s = server()
    await driver.spawn(s, image())
    # The test driver keeps volumes in memory: put a real qcow2 overlay of the cached
    # image where a real directory pool would hold the root volume.
    vol_path = Path(domain(driver, s.id).XMLDesc(0).split("file='")[1].split("'")[0])
    base = tmp_path / "images" / "img-1.raw"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(vol_path)],
        check=True,
    )
    target = tmp_path / "snap" / "snap.qcow2"
    assert await driver.snapshot(s, target) == "qcow2"
    info = await disks.image_info(target)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert await power(driver, s.id) == states.RUNNING  # paused for the copy, then resumed


async def test_inventory(driver: LibvirtDriver) -> None:
    inv = await driver.get_inventory()
    assert inv.vcpus == 8
    assert inv.memory_mb == 16384
    assert inv.local_gb == 100  # the test driver gives every pool 100 GiB, whatever it says
    assert inv.hypervisor_type == "TEST"
    assert inv.hypervisor_version.count(".") == 2
    assert inv.resources == {pci_class("gpu"): 2}


async def test_pool_is_made_when_missing(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, write_node(tmp_path, with_pool=False))
    drv = LibvirtDriver("host1", cfg)
    await drv.init_host()
    try:
        pool = drv.connection.get().storagePoolLookupByName("hvmesh")
        assert pool.isActive()
        desc = ET.fromstring(pool.XMLDesc(0))
        assert desc.findtext("target/path") == str(tmp_path / "disks")
    finally:
        await drv.cleanup_host()


async def test_pci_devices_are_picked_free(driver: LibvirtDriver) -> None:
    a, b, c = (server(**{"pci_passthrough:alias": "gpu:1"}) for _ in range(3))
    await driver.spawn(a, image())
    await driver.spawn(b, image())

    def bus(s: Server) -> str:
        root = ET.fromstring(domain(driver, s.id).XMLDesc(0))
        return root.find("devices/hostdev/source/address").get("bus", "")

    assert {bus(a), bus(b)} == {"0x03", "0x04"}
    with pytest.raises(DriverError, match="1 device\\(s\\) wanted, 0 free"):
        await driver.spawn(c, image())
    with pytest.raises(DriverError, match="'nic' is not in \\[libvirt\\] pci_alias"):
        await driver.spawn(server(**{"pci_passthrough:alias": "nic:1"}), image())


async def test_resize_in_place_confirm_and_revert(driver: LibvirtDriver) -> None:
    s = server()
    await driver.spawn(s, image())
    # The same disk size: the test driver cannot resize volumes (checked at the end).
    bigger = Flavor(id="f2", name="m2", vcpus=4, ram_mb=1024, disk_gb=1)
    await driver.migrate_disk_and_power_off(s, "host1", bigger)
    assert await power(driver, s.id) == states.SHUTDOWN
    resized = msgspec.structs.replace(s, flavor=bigger)
    await driver.finish_migration(resized, image(), power_on=True)
    dom = domain(driver, s.id)
    assert dom.info()[3] == 4 and await power(driver, s.id) == states.RUNNING
    assert dom.info()[1] == 1024 * 1024  # KiB
    await driver.finish_revert_migration(s, power_on=True)
    assert domain(driver, s.id).info()[3] == 2  # the old flavor's vCPUs
    assert await power(driver, s.id) == states.RUNNING
    # Again, confirmed this time: the resized instance stays.
    await driver.migrate_disk_and_power_off(s, "host1", bigger)
    await driver.finish_migration(resized, image(), power_on=True)
    await driver.confirm_migration(s.id)
    assert await driver.list_instances() == [s.id]
    assert domain(driver, s.id).info()[3] == 4
    # A bigger disk asks libvirt to grow the volume, which the test driver refuses: the
    # refusal is reported, not hidden.
    larger = msgspec.structs.replace(s, flavor=msgspec.structs.replace(bigger, disk_gb=5))
    await driver.migrate_disk_and_power_off(s, "host1", larger.flavor)
    with pytest.raises(DriverError, match=r"growing the root disk.*virStorageVolResize"):
        await driver.finish_migration(larger, image(), power_on=True)


async def test_live_migration_destination_steps(driver: LibvirtDriver) -> None:
    # The test driver cannot migrate; what a destination prepares and rolls back can be.
    s = server()
    await driver.check_can_live_migrate_destination(s, "host0")
    await driver.pre_live_migration(s)
    assert volume_names(driver) == [f"{s.id}-root"]
    await driver.rollback_live_migration_at_destination(s.id)
    assert volume_names(driver) == []
    await driver.spawn(s, image())
    with pytest.raises(DriverError, match="already runs"):
        await driver.check_can_live_migrate_destination(s, "host0")
    await driver.check_can_live_migrate_source(s, "host2")
    await driver.power_off(s.id)
    with pytest.raises(DriverError, match="not running"):
        await driver.check_can_live_migrate_source(s, "host2")


async def test_lifecycle_events_ignore_foreign_domains(driver: LibvirtDriver) -> None:
    conn = driver.connection.get()
    foreign = conn.defineXML(
        "<domain type='qemu'><name>not-ours</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    foreign.create()
    s = server()
    await driver.spawn(s, image())
    await events(driver).wait_for(s.id, states.RUNNING)  # events come in order
    assert await driver.list_instances() == [s.id]
    assert all(sid == s.id for sid, _ in events(driver).seen)


async def test_reconnect_after_connection_loss(driver: LibvirtDriver) -> None:
    # A test:/// connection lives in this process and cannot drop, so the close callback
    # libvirt would call on a lost connection is called directly.
    conn = driver.connection
    old = conn.get()
    conn._closed(old, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)  # as libvirt would
    assert not driver.healthy()
    with pytest.raises(DriverError, match="not connected"):
        await driver.list_instances()
    await asyncio.wait_for(conn.connected.wait(), TIMEOUT)
    assert driver.healthy() and conn.get() is not old
    s = server()
    await driver.spawn(s, image())
    await events(driver).wait_for(s.id, states.RUNNING)  # events registered again


async def test_unreachable_libvirt_is_a_clear_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tmp_path / "missing.xml")
    drv = LibvirtDriver("host1", cfg)
    with pytest.raises(DriverError, match="cannot connect to libvirt at test://"):
        await drv.init_host()
    assert not drv.healthy()
