"""The VMware compute driver: one agent manages a vCenter cluster (or standalone ESXi host) as one provider, or each of its ESXi hosts as one.

Each server is one VM named by its server id and tagged with it in extraConfig
(hvmesh.server_id), placed in the [vmware] folder and resource pool, its root disk a
copy of the image's flat VMDK in the datastore image cache (images.py), grown to the
flavor's size, its NICs vmxnet3 cards on the mapped port groups. Power-state changes
come from WaitForUpdatesEx (events.py); resize and cold migration between clusters are in
moves.py; a config drive is an ISO on the datastore behind a CD-ROM (drive.py). Each VM's
serial port writes its console log to the VM's folder (console.py); vMotion is in live.py;
a snapshot is in snapshot.py. vSphere has no pause: those steps raise NotImplementedError.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, ClassVar

from pyVmomi import vim, vmodl

from hvmesh.agents.driver import ComputeDriver, DriverError, InstanceInfo, NodeInventory
from hvmesh.agents.vmware import console, drive, inventory, vm_spec
from hvmesh.agents.vmware.base import POWER_STATES
from hvmesh.agents.vmware.link import Link
from hvmesh.agents.vmware.session import Session, fault_message
from hvmesh.agents.vmware.snapshot import VmwareSnapshot
from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Image, Server, Vif

LOG = log.get_logger(__name__)

NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")


def node_name(esx_host: str) -> str:
    """The provider name of an ESXi host: its name with every other character a '-'
    (esx01.example.com: esx01-example-com)."""
    return NOT_IN_NAME.sub("-", esx_host)


#: Seconds a guest gets to shut down through VMware Tools before it is powered off.
SHUTDOWN_TIMEOUT = 60.0
NIC_KEY = -200


class VmwareDriver(VmwareSnapshot):
    name: ClassVar[str] = "vmware"
    capabilities: ClassVar[dict[str, bool]] = {
        "supports_pause": False,
        "supports_suspend": True,
        "supports_resize": True,
        "supports_attach_interface": True,
        "supports_live_migration": True,
        "supports_snapshot": True,  # the root disk's flat VMDK, as a raw image
        "supports_evacuate": False,
        "supports_migrate_to_same_host": False,
        "supports_multiattach": False,
        "supports_pci_passthrough": False,
        # a raw image is uploaded as a flat VMDK; other formats would need converting
        "supports_image_type_raw": True,
    }

    # --- providers ----------------------------------------------------------------------------

    @classmethod
    async def node_drivers(cls, host: str, config: Config) -> list[ComputeDriver]:
        """One driver for the cluster; under host_per_provider one per ESXi host of it,
        named after the host, sharing one link to vCenter."""
        if not config.vmware.host_per_provider:
            return [cls(host, config)]
        session = Session(config.vmware, f"{host}-discovery", probe_interval=3600.0)
        await session.open()
        try:
            facts = await session.call(
                lambda si: inventory.cluster_facts(
                    si, inventory.locate(si, config.vmware).cluster, config.vmware.datastore_regex
                ),
                "listing the cluster's hosts",
            )
        finally:
            await session.close()
        if not facts.hosts:
            raise DriverError(f"cluster {config.vmware.cluster or '(first)'} has no ESXi host")
        link = Link(config.vmware, host, min(config.compute.heartbeat_interval, 10.0))
        return [
            cls(node_name(h.name), config, esx_host=h.name, link=link)
            for h in sorted(facts.hosts, key=lambda h: h.name)
        ]

    # --- inventory, listing -----------------------------------------------------------------

    async def get_inventory(self) -> NodeInventory:
        facts = await self.facts()
        return await self.session.call(lambda si: inventory.node_inventory(si, facts))

    async def list_instances(self) -> list[str]:
        return sorted(await self.tagged())

    async def get_info(self, server_id: str) -> InstanceInfo:
        vm = await self.require(server_id)
        state = await self.power_state_of(vm)
        return InstanceInfo(power_state=POWER_STATES.get(state, states.NOSTATE))

    # --- spawn, destroy ---------------------------------------------------------------------

    async def spawn(self, server: Server, image: Image | None) -> None:
        if await self.lookup(server.id) is not None:
            LOG.info("vmware.spawn_exists", server=server.id)
            return
        try:
            vm = await self._create(server, image)
            await self.vm_task(vm, "PowerOnVM_Task", f"powering on {server.id}")
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(server.id)
            raise
        LOG.info("vmware.spawned", server=server.id, flavor=server.flavor.name)

    async def _create(self, server: Server, image: Image | None) -> Any:
        if image is None:
            raise DriverError(f"server {server.id}: the VMware driver boots from an image")
        if image.disk_format != "raw":
            raise DriverError(
                f"image {image.name} is {image.disk_format}: the VMware driver boots raw images"
            )
        facts = await self.facts()
        hosts = [h for h in facts.hosts if h.usable]
        if not hosts:
            raise DriverError(f"cluster {self.cfg.cluster or '(first)'} has no usable host")
        size = max(image.size or 0, server.flavor.disk_gb * inventory.GIB)
        datastore = inventory.pick_datastore(facts, size)
        local = await (await self.images()).fetch(image)
        checksum = image.checksum or local.name
        loc = self.location
        cached = await self.files.cached_image(
            await self.cookie(), loc.datacenter_name, datastore.name, checksum, local
        )
        disk = f"[{datastore.name}] {vm_spec.vm_name(server.id)}/{vm_spec.vm_name(server.id)}.vmdk"
        await self._copy_disk(cached, disk, datastore.name, server.id)
        nics = await self._nics(server.network_info)
        image_kb = -(-max(local.stat().st_size, 1) // 1024)
        nics.append(console.serial_add(console.console_path(datastore.name, server.id)))
        if server.config_drive:
            folder = vm_spec.vm_name(server.id)
            nics.append(drive.cdrom_add(await self.upload_drive(server, datastore.name, folder)))
        spec = vm_spec.create_spec(server, datastore.name, disk, image_kb, nics)
        host = max(hosts, key=lambda h: h.memory_bytes).moref
        vm = await self.session.run_task(
            lambda _si: loc.folder.CreateVM_Task(config=spec, pool=loc.pool, host=host),
            f"creating the VM of {server.id}",
        )
        self._vms[server.id] = vm
        await self._grow(vm, server.flavor.disk_gb, server.id)
        return vm

    async def _copy_disk(self, source: str, dest: str, datastore: str, server_id: str) -> None:
        dc = self.location.datacenter
        folder = dest.rsplit("/", 1)[0]

        def mkdir(si: Any) -> None:
            with contextlib.suppress(vim.fault.FileAlreadyExists):
                si.content.fileManager.MakeDirectory(
                    name=folder, datacenter=dc, createParentDirectories=True
                )

        await self.read(mkdir, f"making the folder of {server_id} on {datastore}")
        await self.session.run_task(
            lambda si: si.content.virtualDiskManager.CopyVirtualDisk_Task(
                sourceName=source, sourceDatacenter=dc, destName=dest, destDatacenter=dc
            ),
            f"copying the root disk of {server_id}",
        )

    async def _network(self, vif: Vif) -> Any:
        mappings = vm_spec.portgroup_mappings(self.config.compute.physical_network_mappings)
        group = vm_spec.portgroup_for(vif, mappings)
        dc = self.location.datacenter
        return await self.read(lambda _si: vm_spec.find_network(dc, group), f"port group {group}")

    async def _nics(self, vifs: list[Vif]) -> list[Any]:
        out = []
        for i, vif in enumerate(vifs):
            network = await self._network(vif)
            out.append(
                await self.read(
                    lambda _si, v=vif, n=network, k=NIC_KEY - i: vm_spec.nic_add(v, n, k),
                    f"port {vif.port_id}",
                )
            )
        return out

    async def destroy(self, server_id: str) -> None:
        vm = await self.lookup(server_id)
        if vm is None:
            return
        iso = None
        try:
            iso = await self.drive_of(vm)
            if await self.power_state_of(vm) != "poweredOff":
                await self.vm_task(vm, "PowerOffVM_Task", f"powering off {server_id}")
            await self.vm_task(vm, "Destroy_Task", f"destroying {server_id}")
        except vmodl.fault.ManagedObjectNotFound:
            pass
        if iso is not None:
            await self.delete_drive(iso, server_id)
        self._vms.pop(server_id, None)
        LOG.info("vmware.destroyed", server=server_id)

    # --- power --------------------------------------------------------------------------------

    async def _tools_running(self, vm: Any) -> bool:
        status = await self.session.call(lambda _si: vm.guest.toolsRunningStatus)
        return str(status) == "guestToolsRunning"

    async def _wait_power(self, vm: Any, want: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self.power_state_of(vm) == want:
                return True
            await asyncio.sleep(self.cfg.task_poll_interval)
        return False

    async def power_off(self, server_id: str) -> None:
        """A guest shutdown through VMware Tools when they run, then a power-off."""
        vm = await self.require(server_id)
        if await self.power_state_of(vm) == "poweredOff":
            return
        if await self.power_state_of(vm) == "poweredOn" and await self._tools_running(vm):
            try:
                await self.session.call(lambda _si: vm.ShutdownGuest())
                if await self._wait_power(vm, "poweredOff", SHUTDOWN_TIMEOUT):
                    return
            except vmodl.MethodFault as exc:
                LOG.warning("vmware.shutdown_refused", server=server_id, error=fault_message(exc))
        if await self.power_state_of(vm) != "poweredOff":
            await self.vm_task(vm, "PowerOffVM_Task", f"powering off {server_id}")
        LOG.info("vmware.powered_off", server=server_id)

    async def power_on(self, server: Server) -> None:
        vm = await self.require(server.id)
        if await self.power_state_of(vm) != "poweredOn":
            await self.vm_task(vm, "PowerOnVM_Task", f"powering on {server.id}")
        LOG.info("vmware.powered_on", server=server.id)

    async def reboot(self, server: Server, reboot_type: str) -> None:
        """SOFT: RebootGuest through VMware Tools; HARD, or without Tools: a reset (from
        off or suspended: a power-off, then on)."""
        if reboot_type not in ("SOFT", "HARD"):
            raise DriverError(f"reboot type {reboot_type!r} is not SOFT or HARD")
        vm = await self.require(server.id)
        state = await self.power_state_of(vm)
        if reboot_type == "SOFT" and state == "poweredOn" and await self._tools_running(vm):
            try:
                await self.session.call(lambda _si: vm.RebootGuest())
                LOG.info("vmware.rebooted", server=server.id, type="SOFT")
                return
            except vmodl.MethodFault as exc:
                LOG.warning("vmware.soft_reboot_failed", server=server.id, error=fault_message(exc))
        if state == "poweredOn":
            await self.vm_task(vm, "ResetVM_Task", f"resetting {server.id}")
        else:
            if state == "suspended":
                await self.vm_task(vm, "PowerOffVM_Task", f"powering off {server.id}")
            await self.vm_task(vm, "PowerOnVM_Task", f"powering on {server.id}")
        LOG.info("vmware.rebooted", server=server.id, type="HARD")

    async def suspend(self, server_id: str) -> None:
        vm = await self.require(server_id)
        state = await self.power_state_of(vm)
        if state == "suspended":
            return
        if state != "poweredOn":  # vSphere's rule (InvalidPowerState), checked here first
            raise DriverError(f"cannot suspend {server_id}: it is {state}, not running")
        await self.vm_task(vm, "SuspendVM_Task", f"suspending {server_id}")

    async def resume(self, server: Server) -> None:
        vm = await self.require(server.id)
        if await self.power_state_of(vm) != "poweredOn":
            await self.vm_task(vm, "PowerOnVM_Task", f"resuming {server.id}")

    # --- interfaces ---------------------------------------------------------------------------

    async def attach_interface(self, server: Server, vif: Vif) -> None:
        vm = await self.require(server.id)
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        if vm_spec.find_nic(devices, vif.mac) is not None:
            return
        network = await self._network(vif)
        change = await self.session.call(lambda _si: vm_spec.nic_add(vif, network, NIC_KEY))
        spec = vim.vm.ConfigSpec(deviceChange=[change])
        what = f"attaching port {vif.port_id} to {server.id}"
        await self.vm_task(vm, "ReconfigVM_Task", what, spec=spec)
        LOG.info("vmware.interface_attached", server=server.id, port=vif.port_id, mac=vif.mac)

    async def detach_interface(self, server: Server, vif: Vif) -> None:
        vm = await self.require(server.id)
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        nic = vm_spec.find_nic(devices, vif.mac)
        if nic is None:
            return
        spec = vim.vm.ConfigSpec(deviceChange=[vm_spec.nic_remove(nic)])
        what = f"detaching port {vif.port_id} from {server.id}"
        await self.vm_task(vm, "ReconfigVM_Task", what, spec=spec)
        LOG.info("vmware.interface_detached", server=server.id, port=vif.port_id, mac=vif.mac)
