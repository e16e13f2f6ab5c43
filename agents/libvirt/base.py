"""The libvirt driver's foundation: its connection and events, where an instance's
things are, and how a domain is built, started and taken apart. The driver's actions
(driver.py) and moves (moves.py) are written on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt

from hvmesh.agents.driver import ComputeDriver, DriverError
from hvmesh.agents.libvirt import disks, inventory, pci, power
from hvmesh.agents.libvirt.connection import Connection
from hvmesh.agents.libvirt.domain_xml import DomainSpec, domain_name, domain_xml, server_id_of
from hvmesh.core import log
from hvmesh.core.config import Config, state_dir
from hvmesh.core.protocol.records import Flavor, Image, Server
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

#: Saved next to a same-host resize: the definition to go back to on a revert.
PRE_RESIZE_XML = "pre-resize.xml"
#: Where a config drive ISO for the server is expected, in its instance directory.
CONFIG_DRIVE = "disk.config"
CONSOLE_TAIL_BYTES = 1024 * 1024

LIVE_MIGRATION_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_NON_SHARED_INC
)
UNSUPPORTED = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG)


@contextlib.contextmanager
def failing(what: str) -> Iterator[None]:
    """libvirt's errors as DriverError, naming what was being done."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise DriverError(f"{what}: {exc.get_error_message()}") from None


def no_domain(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


class LibvirtBase(ComputeDriver):
    def __init__(self, host: str, config: Config) -> None:
        super().__init__(host, config)
        self._conn = Connection(
            config.libvirt.uri, config.libvirt.reconnect_max_delay, self._on_lifecycle
        )
        self._waiters = power.Waiters()
        self._pending: set[asyncio.Task[None]] = set()
        self._define_lock = asyncio.Lock()  # PCI devices are picked and taken atomically

    # --- connection, events ---------------------------------------------------------------

    async def init_host(self) -> None:
        await self._conn.open()
        with failing(f"storage pool {self.config.libvirt.storage_pool}"):
            disks.ensure_pool(self._conn.get(), self.config)
        LOG.info("libvirt.init_host", host=self.host, uri=self.config.libvirt.uri)

    async def cleanup_host(self) -> None:
        await self._conn.close()
        await stop_tasks(list(self._pending))

    def healthy(self) -> bool:
        return self._conn.healthy

    @property
    def connection(self) -> Connection:
        return self._conn

    def _on_lifecycle(self, name: str, event: int, detail: int) -> None:
        server_id = server_id_of(name)
        if server_id is None:
            return
        state = power.of_event(event, detail)
        LOG.debug("libvirt.event", server=server_id, lifecycle=event, detail=detail, power=state)
        if state is None:
            return
        self._waiters.notify(server_id, state)
        task = asyncio.get_running_loop().create_task(self._emit(server_id, state))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _emit(self, server_id: str, state: int) -> None:
        try:
            await self.emit_power(server_id, state)
        except Exception:
            LOG.exception("libvirt.power_listener_failed", server=server_id)

    # --- lookups and paths ----------------------------------------------------------------

    def _lookup(self, server_id: str) -> libvirt.virDomain | None:
        try:
            return self._conn.get().lookupByName(domain_name(server_id))
        except libvirt.libvirtError as exc:
            if no_domain(exc):
                return None
            raise DriverError(f"looking up instance {server_id}: {exc}") from None

    def _require(self, server_id: str) -> libvirt.virDomain:
        dom = self._lookup(server_id)
        if dom is None:
            raise DriverError(f"instance {server_id} not found on {self.host}")
        return dom

    def _pool(self) -> libvirt.virStoragePool:
        with failing(f"storage pool {self.config.libvirt.storage_pool}"):
            return disks.ensure_pool(self._conn.get(), self.config)

    def instance_dir(self, server_id: str) -> Path:
        base = self.config.libvirt.instances_path or state_dir() / "instances"
        return Path(base).expanduser() / server_id

    def console_log(self, server_id: str) -> Path:
        base = self.config.libvirt.console_log_dir or state_dir() / "console"
        return Path(base).expanduser() / f"{server_id}.log"

    # --- building a domain ------------------------------------------------------------------

    async def _root_volume(
        self, server: Server, image: Image | None, flavor: Flavor
    ) -> libvirt.virStorageVol:
        """A fresh root volume over the server's image, as large as the flavor says."""
        if image is None:
            raise DriverError(
                f"server {server.id}: the libvirt driver boots from an image, and none was given"
            )
        base = await (await self.images()).fetch(image)
        info = await disks.image_info(base)
        virtual = int(info.get("virtual-size", 0))
        capacity = flavor.disk_gb * disks.GIB if flavor.disk_gb else virtual
        if capacity < virtual:
            raise DriverError(
                f"flavor {flavor.name}: its {flavor.disk_gb} GiB disk is smaller than image "
                f"{image.name}'s virtual size of {virtual} bytes"
            )
        pool = self._pool()
        with failing(f"creating the root disk of {server.id}"):
            return disks.create_overlay(
                pool, disks.root_volume_name(server.id), base, image.disk_format, capacity
            )

    async def _define(
        self,
        server: Server,
        flavor: Flavor,
        image_properties: dict[str, str],
        root: libvirt.virStorageVol,
    ) -> libvirt.virDomain:
        """Define (or redefine) the server's domain around its root volume."""
        props = image_properties
        cache = await self.images() if ("kernel_id" in props or "ramdisk_id" in props) else None
        kernel = (
            await cache.fetch_id(props["kernel_id"]) if cache and "kernel_id" in props else None
        )
        initrd = (
            await cache.fetch_id(props["ramdisk_id"]) if cache and "ramdisk_id" in props else None
        )
        if initrd is not None and kernel is None:
            raise DriverError(f"image of {server.id} has a ramdisk_id but no kernel_id")
        drive = self.instance_dir(server.id) / CONFIG_DRIVE
        if server.config_drive:  # rewritten each time: the server's data may have changed
            await self.write_config_drive(server, drive)
        console = self.console_log(server.id)
        console.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn.get()
        with failing(f"reading the host of {server.id}"):
            arch = inventory.host_arch(conn.getCapabilities())
        async with self._define_lock:
            with failing(f"listing PCI devices for {server.id}"):
                hostdevs = pci.pick(
                    conn,
                    pci.parse_aliases(self.config.libvirt.pci_alias),
                    pci.requested(flavor.extra_specs),
                    domain_name(server.id),
                )
            spec = DomainSpec(
                server=server,
                flavor=flavor,
                image_properties=props,
                arch=arch,
                root_disk=Path(root.path()),
                console_log=console,
                kernel=kernel,
                initrd=initrd,
                config_drive=drive if server.config_drive and drive.exists() else None,
                hostdevs=hostdevs,
            )
            xml = domain_xml(spec, self.config)
            with failing(f"defining instance {server.id}"):
                dom = conn.defineXML(xml)
        LOG.info("libvirt.domain_defined", server=server.id, flavor=flavor.name)
        return dom

    async def _start(self, dom: libvirt.virDomain, server_id: str) -> None:
        with failing(f"starting instance {server_id}"):
            await asyncio.to_thread(dom.create)
        LOG.info("libvirt.domain_started", server=server_id)

    async def _stop_hard(self, dom: libvirt.virDomain) -> None:
        try:
            if dom.isActive():
                await asyncio.to_thread(dom.destroy)
        except libvirt.libvirtError as exc:
            if not no_domain(exc) and exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise

    @staticmethod
    def _undefine(dom: libvirt.virDomain) -> None:
        """Undefine with its managed save image, NVRAM and snapshot metadata; a driver
        that refuses a flag is asked again with fewer."""
        tries = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
        )
        for flags in tries:
            try:
                dom.undefineFlags(flags)
                return
            except libvirt.libvirtError as exc:
                if no_domain(exc):
                    return
                if exc.get_error_code() not in UNSUPPORTED:
                    raise
        if dom.hasManagedSaveImage(0):
            dom.managedSaveRemove(0)
        dom.undefine()

    def _root_path(self, dom: libvirt.virDomain, server_id: str) -> Path:
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for disk in root.iterfind("devices/disk[@device='disk']"):
            source = disk.find("source")
            if source is not None and source.get("file"):
                return Path(source.get("file", ""))
        raise DriverError(f"instance {server_id} has no root disk file")
