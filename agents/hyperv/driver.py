"""The Hyper-V compute driver: one agent manages one Windows Hyper-V host over WinRM, running the Hyper-V PowerShell module's cmdlets.

Each server is one VM named by its server id (base.py), its root disk a differencing VHD
over the image's base disk in the host's image cache (files.py), its interfaces network
adapters with the ports' MACs connected to the virtual switch [compute]
physical_network_mappings maps their physical network to ([hyperv] switch otherwise), its
config drive an ISO in a DVD drive. Pause is Suspend-VM, suspend is Save-VM (and
Remove-VMSavedState turns a saved VM off); a resize
changes the VM's processors and memory in place (Set-VMProcessor, Set-VMMemory); live
migration is Move-VM with its storage (moves.py); a snapshot is the root disk under a
checkpoint, converted to a standalone disk and downloaded. Hyper-V keeps no console log
for the driver to read.
"""

from __future__ import annotations

import contextlib
import ntpath
import tempfile
import uuid
from pathlib import Path
from typing import ClassVar

from hvmesh.agents.driver import DriverError, InstanceInfo, NodeInventory
from hvmesh.agents.hyperv import scripts
from hvmesh.agents.hyperv.base import notes_for
from hvmesh.agents.hyperv.moves import HypervMoves
from hvmesh.agents.hyperv.transport import CommandFailed
from hvmesh.core import log
from hvmesh.core.protocol.records import Image, Server, Vif

LOG = log.get_logger(__name__)

MIB = 1 << 20
GIB = 1 << 30
ARCHES = {"64-bit": "x86_64", "ARM 64-bit Processor": "aarch64", "ARM64": "aarch64"}


def hyperv_mac(mac: str) -> str:
    """A MAC as Hyper-V writes it: twelve hex digits, no separators."""
    return mac.replace(":", "").replace("-", "").upper()


class HypervDriver(HypervMoves):
    name: ClassVar[str] = "hyperv"
    capabilities: ClassVar[dict[str, bool]] = {
        "supports_pause": True,
        "supports_suspend": True,
        "supports_resize": True,
        "supports_attach_interface": True,
        "supports_live_migration": True,
        "supports_evacuate": False,
        "supports_migrate_to_same_host": True,
        "supports_multiattach": False,
        "supports_pci_passthrough": False,
        "supports_image_type_vhd": True,
        "supports_image_type_vhdx": True,
        "supports_snapshot": True,
    }

    # --- inventory, listing -----------------------------------------------------------------

    async def get_inventory(self) -> NodeInventory:
        found = await self.ps(scripts.HOST_INFO, "reading the host", vhd_path=self.cfg.vhd_path)
        if len(found) != 3 or not all(isinstance(f, dict) for f in found):
            raise DriverError(f"reading the host {self.cfg.host}: unexpected answer {found!r}")
        vmhost, volume, os_info = found
        return NodeInventory(
            vcpus=int(vmhost["LogicalProcessorCount"]),
            memory_mb=int(vmhost["MemoryCapacity"]) // MIB,
            local_gb=int(volume["SizeRemaining"]) // GIB,
            hypervisor_type="hyperv",
            hypervisor_version=str(os_info.get("Version") or "unknown"),
            cpu_arch=ARCHES.get(str(os_info.get("OSArchitecture")), "x86_64"),
        )

    async def list_instances(self) -> list[str]:
        return sorted(await self.vms())

    async def get_info(self, server_id: str) -> InstanceInfo:
        got = (await self.vms()).get(server_id)
        if got is None:
            raise DriverError(f"instance {server_id} not found on {self.host}")
        # What get_info answers is reported (after each step, in the power sync): the
        # poll compares with it, so a change back and forth between two polls is seen.
        self._powers[server_id] = got[1]
        return InstanceInfo(power_state=got[1])

    # --- spawn, destroy ---------------------------------------------------------------------

    async def spawn(self, server: Server, image: Image | None) -> None:
        if await self.vm_state(server.id) is not None:
            LOG.info("hyperv.spawn_exists", server=server.id)
            return
        try:
            await self._create(server, image)
            await self.vm_ps(scripts.START, f"starting {server.id}", server.id)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(server.id)
            raise
        LOG.info("hyperv.spawned", server=server.id, flavor=server.flavor.name)

    async def _create(self, server: Server, image: Image | None) -> None:
        if image is None:
            raise DriverError(f"server {server.id}: the Hyper-V driver boots from an image")
        base = await self.cached_image(image)
        folder = self.instance_dir(server.id)
        ext = ntpath.splitext(base)[1]
        switches = [self.switch_for(vif) for vif in server.network_info]  # fails early
        await self.ps(
            scripts.CREATE_VM,
            f"creating the VM of {server.id}",
            name=server.id,
            dir=folder,
            disk=ntpath.join(folder, f"root{ext}"),
            base=base,
            generation=self.cfg.generation,
            memory=server.flavor.ram_mb * MIB,
            vcpus=server.flavor.vcpus,
            notes=notes_for(server.id, server.name),
        )
        for vif, switch in zip(server.network_info, switches, strict=True):
            await self._add_nic(server.id, vif, switch)
        if server.config_drive:
            with tempfile.TemporaryDirectory(prefix="hvmesh-cd-") as tmp:
                iso = await self.write_config_drive(server, Path(tmp) / "configdrive.iso")
                remote = ntpath.join(folder, "configdrive.iso")
                await self.upload(iso, remote)
            await self.vm_ps(scripts.ADD_DVD, f"attaching the config drive of {server.id}",
                             server.id, iso=remote)  # fmt: skip

    async def _add_nic(self, server_id: str, vif: Vif, switch: str) -> None:
        what = f"plugging port {vif.port_id} of {server_id} into switch {switch}"
        nic = vif.port_id
        await self.vm_ps(scripts.ADD_NIC, what, server_id, nic=nic, mac=hyperv_mac(vif.mac),
                         switch=switch)  # fmt: skip
        if vif.network_type == "vlan" and vif.segmentation_id is not None:
            await self.vm_ps(scripts.SET_VLAN, what, server_id, nic=nic, vlan=vif.segmentation_id)

    async def destroy(self, server_id: str) -> None:
        state = await self.vm_state(server_id)
        if state is not None:
            await self.turn_off(server_id, state)
            await self.vm_ps(scripts.REMOVE_VM, f"removing the VM of {server_id}", server_id)
        await self.remove_path(self.instance_dir(server_id))
        self._powers.pop(server_id, None)
        LOG.info("hyperv.destroyed", server=server_id)

    # --- power --------------------------------------------------------------------------------

    async def _cmd(self, body: str, verb: str, server_id: str) -> None:
        await self.vm_ps(body, f"{verb} {server_id}", server_id)

    def _refuse(self, verb: str, server_id: str, state: str) -> DriverError:
        return DriverError(f"cannot {verb} {server_id}: it is {state}")

    async def turn_off(self, server_id: str, state: str) -> None:
        """Off at once, from any state: a saved VM's state discarded, a running or paused
        one turned off (Stop-VM -TurnOff)."""
        if state == "Saved":
            await self._cmd(scripts.DISCARD_SAVED, "discarding the saved state of", server_id)
        elif state != "Off":
            await self._cmd(scripts.TURN_OFF, "turning off", server_id)

    async def shut_down(self, server_id: str) -> bool:
        """Stop-VM: the guest shuts down through its integration services; False (and
        the VM as it was) when it does not."""
        try:
            await self._cmd(scripts.SHUTDOWN, "shutting down", server_id)
        except CommandFailed as exc:
            LOG.warning("hyperv.shutdown_refused", server=server_id, error=str(exc))
            return False
        return True

    async def power_off(self, server_id: str) -> None:
        """A guest shutdown when the VM runs, then Stop-VM -TurnOff if it is not off."""
        state = await self.require_state(server_id)
        if state == "Off":
            return
        if state == "Running" and await self.shut_down(server_id):
            state = await self.require_state(server_id)
        await self.turn_off(server_id, state)
        LOG.info("hyperv.powered_off", server=server_id)

    async def power_on(self, server: Server) -> None:
        state = await self.require_state(server.id)
        if state == "Paused":
            await self._cmd(scripts.UNPAUSE, "resuming", server.id)
        elif state != "Running":
            await self._cmd(scripts.START, "starting", server.id)

    async def reboot(self, server: Server, reboot_type: str) -> None:
        """SOFT: a guest shutdown and a start (Hyper-V has no guest restart), a reset
        when the guest does not shut down; HARD: Restart-VM (a reset), or from off,
        paused or saved a turn-off and a start."""
        if reboot_type not in ("SOFT", "HARD"):
            raise DriverError(f"reboot type {reboot_type!r} is not SOFT or HARD")
        state = await self.require_state(server.id)
        if reboot_type == "SOFT" and state == "Running" and await self.shut_down(server.id):
            await self._cmd(scripts.START, "starting", server.id)
            return
        if state == "Running":
            await self._cmd(scripts.RESET, "resetting", server.id)
            return
        await self.turn_off(server.id, state)
        await self._cmd(scripts.START, "starting", server.id)

    async def pause(self, server_id: str) -> None:
        state = await self.require_state(server_id)
        if state == "Paused":
            return
        if state != "Running":
            raise self._refuse("pause", server_id, state)
        await self._cmd(scripts.PAUSE, "pausing", server_id)

    async def unpause(self, server_id: str) -> None:
        state = await self.require_state(server_id)
        if state == "Running":
            return
        if state != "Paused":
            raise self._refuse("unpause", server_id, state)
        await self._cmd(scripts.UNPAUSE, "unpausing", server_id)

    async def suspend(self, server_id: str) -> None:
        state = await self.require_state(server_id)
        if state == "Saved":
            return
        if state not in ("Running", "Paused"):
            raise self._refuse("suspend", server_id, state)
        await self._cmd(scripts.SAVE, "saving", server_id)

    async def resume(self, server: Server) -> None:
        state = await self.require_state(server.id)
        if state == "Running":
            return
        if state != "Saved":
            raise self._refuse("resume", server.id, state)
        await self._cmd(scripts.START, "resuming", server.id)

    # --- interfaces ---------------------------------------------------------------------------

    async def _adapters(self, server_id: str) -> list[dict[str, str]]:
        found = await self.vm_ps(scripts.VM_DETAILS, f"reading {server_id}", server_id)
        return [f for f in found[1:] if isinstance(f, dict)]

    async def attach_interface(self, server: Server, vif: Vif) -> None:
        switch = self.switch_for(vif)
        if any(a.get("MacAddress") == hyperv_mac(vif.mac) for a in await self._adapters(server.id)):
            return
        try:
            await self._add_nic(server.id, vif, switch)
        except DriverError:
            with contextlib.suppress(DriverError):
                await self.detach_interface(server, vif)
            raise
        LOG.info("hyperv.interface_attached", server=server.id, port=vif.port_id, mac=vif.mac)

    async def detach_interface(self, server: Server, vif: Vif) -> None:
        for adapter in await self._adapters(server.id):
            if adapter.get("MacAddress") == hyperv_mac(vif.mac):
                what = f"unplugging port {vif.port_id} from {server.id}"
                await self.vm_ps(scripts.REMOVE_NIC, what, server.id, nic=adapter.get("Name"))
                LOG.info("hyperv.interface_detached", server=server.id, port=vif.port_id)

    # --- snapshot -----------------------------------------------------------------------------

    async def snapshot(self, server: Server, target: Path) -> str:
        """A checkpoint (Checkpoint-VM) freezes the root disk while the guest goes on
        writing to the checkpoint's differencing disk; Convert-VHD writes it, merged with
        its base image, as a standalone dynamic disk next to it; the checkpoint is removed
        (its changes merged back) and the standalone disk downloaded, then deleted."""
        await self.require_state(server.id)
        disks = await self.vm_ps(scripts.ROOT_DISK, f"finding the disk of {server.id}", server.id)
        paths = [str(d.get("Path")) for d in disks if isinstance(d, dict) and d.get("Path")]
        if not paths:
            raise DriverError(f"instance {server.id} has no disk to snapshot")
        disk = paths[0]
        ext = ntpath.splitext(disk)[1].lower()
        export = ntpath.join(self.instance_dir(server.id), f"snapshot{ext}")
        checkpoint = f"hvmesh-snapshot-{uuid.uuid4()}"
        await self.remove_path(export)  # left by an interrupted snapshot
        await self.vm_ps(scripts.CHECKPOINT, f"checkpointing {server.id}", server.id,
                         snapshot=checkpoint)  # fmt: skip
        try:
            await self.ps(scripts.EXPORT_DISK, f"writing the disk of {server.id}",
                          disk=disk, dest=export)  # fmt: skip
        finally:
            await self.vm_ps(scripts.REMOVE_CHECKPOINT, f"removing the checkpoint of {server.id}",
                             server.id, snapshot=checkpoint)  # fmt: skip
        try:
            await self.download(export, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        finally:
            with contextlib.suppress(DriverError):
                await self.remove_path(export)
        LOG.info("hyperv.snapshot", server=server.id, bytes=target.stat().st_size)
        return ext.lstrip(".")
