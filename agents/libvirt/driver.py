"""The libvirt compute driver: guests under libvirtd (KVM, or QEMU's software emulation).

Each server is one persistent domain named "hvmesh-<server id>" whose UUID is the
server id, with its root disk a volume in the [libvirt] storage pool. Lifecycle events
from libvirtd become power-state reports (emit_power) and are what power-off waits on.
Calls that can take long (starting, saving, migrating, waiting) run in a thread so the
agent's event loop keeps serving. This module holds the actions on one host; base.py
the connection and domain building, moves.py resize and migration, console.py the live
serial and VNC consoles.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, ClassVar

import libvirt

from hvmesh.agents.driver import (
    CONSOLE_PROTOCOLS,
    ConsoleChannel,
    DriverError,
    InstanceInfo,
    NodeInventory,
)
from hvmesh.agents.libvirt import console, disks, inventory, power
from hvmesh.agents.libvirt.base import CONSOLE_TAIL_BYTES, UNSUPPORTED, failing
from hvmesh.agents.libvirt.domain_xml import server_id_of
from hvmesh.agents.libvirt.interfaces import interface_xml, nic_model
from hvmesh.agents.libvirt.moves import LibvirtMoves
from hvmesh.core import log
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Image, Server, Vif

LOG = log.get_logger(__name__)


class LibvirtDriver(LibvirtMoves):
    name: ClassVar[str] = "libvirt"
    capabilities: ClassVar[dict[str, bool]] = {
        "supports_pause": True,
        "supports_suspend": True,
        "supports_resize": True,
        "supports_multiattach": False,
        "supports_live_migration": True,
        "supports_attach_interface": True,
        "supports_pci_passthrough": True,
        "supports_evacuate": True,
        "supports_migrate_to_same_host": True,
        "supports_snapshot": True,
        "supports_image_type_qcow2": True,
        "supports_image_type_raw": True,
        "supports_image_type_aki": True,
        "supports_image_type_ari": True,
        "supports_serial_console": True,
        # Declared either way; a guest only has a VNC server with [libvirt] vnc_enabled.
        "supports_vnc_console": True,
    }

    # --- the contract: inventory, listing -------------------------------------------------

    async def get_inventory(self) -> NodeInventory:
        with failing(f"reading the inventory of {self.host}"):
            return inventory.node_inventory(self._conn.get(), self.config)

    async def list_instances(self) -> list[str]:
        with failing("listing domains"):
            names = [d.name() for d in self._conn.get().listAllDomains(0)]
        return [sid for sid in map(server_id_of, names) if sid is not None]

    async def get_info(self, server_id: str) -> InstanceInfo:
        dom = self._require(server_id)
        with failing(f"reading the state of {server_id}"):
            return InstanceInfo(power_state=power.of_domain(dom))

    # --- spawn, destroy, rebuild --------------------------------------------------------------

    async def spawn(self, server: Server, image: Image | None) -> None:
        if self._lookup(server.id) is not None:
            LOG.info("libvirt.spawn_exists", server=server.id)
            return
        try:
            root = await self._root_volume(server, image, server.flavor)
            props = image.properties if image is not None else server.image_properties
            dom = await self._define(server, server.flavor, props, root)
            await self._start(dom, server.id)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(server.id)
            raise

    async def destroy(self, server_id: str) -> None:
        dom = self._lookup(server_id)
        if dom is not None:
            with failing(f"destroying instance {server_id}"):
                await self._stop_hard(dom)
                self._undefine(dom)
            LOG.info("libvirt.domain_undefined", server=server_id)
        with failing(f"removing the volumes of {server_id}"):
            disks.delete_server_volumes(self._pool(), server_id)
        shutil.rmtree(self.instance_dir(server_id), ignore_errors=True)
        self.console_log(server_id).unlink(missing_ok=True)

    async def rebuild(self, server: Server, image: Image | None) -> None:
        """A new root disk from `image` under the same domain, started."""
        dom = self._lookup(server.id)
        if dom is None:
            await self.spawn(server, image)
            return
        with failing(f"stopping instance {server.id} to rebuild it"):
            await self._stop_hard(dom)
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)
        with failing(f"removing the old disks of {server.id}"):
            disks.delete_server_volumes(self._pool(), server.id)
        root = await self._root_volume(server, image, server.flavor)
        props = image.properties if image is not None else server.image_properties
        dom = await self._define(server, server.flavor, props, root)
        await self._start(dom, server.id)
        LOG.info("libvirt.rebuilt", server=server.id)

    # --- power ----------------------------------------------------------------------------------

    async def power_off(self, server_id: str) -> None:
        """A clean shutdown, waited for up to [libvirt] shutdown_timeout, then a hard stop."""
        dom = self._require(server_id)
        timeout = self.config.libvirt.shutdown_timeout
        with failing(f"powering off {server_id}"):
            if not dom.isActive():
                return
            if timeout > 0 and dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING:
                await self._shutdown(dom, server_id, timeout)
            await self._stop_hard(dom)
        LOG.info("libvirt.powered_off", server=server_id)

    async def _shutdown(self, dom: libvirt.virDomain, server_id: str, timeout: float) -> None:
        stopped = self._waiters.expect(server_id, lambda p: p in (states.SHUTDOWN, states.CRASHED))
        try:
            await asyncio.to_thread(dom.shutdown)
            if dom.isActive():
                await asyncio.wait_for(stopped, timeout)
        except TimeoutError:
            LOG.warning("libvirt.shutdown_timed_out", server=server_id, timeout=timeout)
        except libvirt.libvirtError as exc:
            LOG.warning("libvirt.shutdown_refused", server=server_id, error=str(exc))
        finally:
            self._waiters.forget(server_id, stopped)

    async def power_on(self, server: Server) -> None:
        dom = self._require(server.id)
        with failing(f"powering on {server.id}"):
            state = dom.state(0)[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            elif not dom.isActive():
                await asyncio.to_thread(dom.create)
        LOG.info("libvirt.powered_on", server=server.id)

    async def reboot(self, server: Server, reboot_type: str) -> None:
        if reboot_type not in ("SOFT", "HARD"):
            raise DriverError(f"reboot type {reboot_type!r} is not SOFT or HARD")
        dom = self._require(server.id)
        if reboot_type == "SOFT" and dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING:
            try:
                await asyncio.to_thread(dom.reboot, 0)
                LOG.info("libvirt.rebooted", server=server.id, type="SOFT")
                return
            except libvirt.libvirtError as exc:
                LOG.warning("libvirt.soft_reboot_failed", server=server.id, error=str(exc))
        with failing(f"hard rebooting {server.id}"):
            await self._stop_hard(dom)
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)
            await asyncio.to_thread(dom.create)
        LOG.info("libvirt.rebooted", server=server.id, type="HARD")

    async def pause(self, server_id: str) -> None:
        dom = self._require(server_id)
        with failing(f"pausing {server_id}"):
            dom.suspend()

    async def unpause(self, server_id: str) -> None:
        dom = self._require(server_id)
        with failing(f"unpausing {server_id}"):
            dom.resume()

    async def suspend(self, server_id: str) -> None:
        """Save the guest's memory to disk (a managed save) and stop it."""
        dom = self._require(server_id)
        with failing(f"suspending {server_id}"):
            await asyncio.to_thread(dom.managedSave, 0)

    async def resume(self, server: Server) -> None:
        """Start the guest again from its managed save."""
        dom = self._require(server.id)
        with failing(f"resuming {server.id}"):
            if dom.state(0)[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            elif not dom.isActive():
                await asyncio.to_thread(dom.create)

    async def get_console_output(self, server_id: str) -> str:
        self._require(server_id)
        path = self.console_log(server_id)
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(fh.tell() - CONSOLE_TAIL_BYTES, 0))
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def open_console(self, server_id: str, protocol: str) -> ConsoleChannel:
        """The serial port (libvirt's console stream) or the VNC server of a running or
        paused instance."""
        if protocol not in CONSOLE_PROTOCOLS:
            raise NotImplementedError(f"the libvirt driver has no {protocol!r} console")
        dom = self._require(server_id)
        with failing(f"reading the state of {server_id}"):
            active = dom.isActive()
        if not active:
            raise DriverError(f"server {server_id} is not running: its console is closed")
        if protocol == "serial":
            return await console.open_serial(self._conn.get(), dom, server_id)
        if not self.config.libvirt.vnc_enabled:
            raise DriverError(
                f"server {server_id} has no VNC console: [libvirt] vnc_enabled is off"
            )
        return await console.open_vnc(dom, server_id)

    # --- interfaces and snapshots -------------------------------------------------------------

    def _device_flags(self, dom: libvirt.virDomain) -> int:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        return flags

    @staticmethod
    def _find_interface(dom: libvirt.virDomain, mac: str) -> ET.Element | None:
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for iface in root.iterfind("devices/interface"):
            found = iface.find("mac")
            if found is not None and found.get("address", "").lower() == mac.lower():
                return iface
        return None

    def _edit_config(self, dom: libvirt.virDomain, edit: Any) -> None:
        """Change the persistent definition by redefining it (for a libvirt that cannot
        attach or detach devices of a stopped domain)."""
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        edit(root)
        self._conn.get().defineXML(ET.tostring(root, encoding="unicode"))

    async def attach_interface(self, server: Server, vif: Vif) -> None:
        dom = self._require(server.id)
        xml = interface_xml(vif, self.config, nic_model(server.image_properties))
        with failing(f"attaching port {vif.port_id} to {server.id}"):
            if self._find_interface(dom, vif.mac) is not None:
                return
            flags = self._device_flags(dom)
            try:
                dom.attachDeviceFlags(xml, flags)
            except libvirt.libvirtError as exc:
                if (
                    flags & libvirt.VIR_DOMAIN_AFFECT_LIVE
                    or exc.get_error_code() not in UNSUPPORTED
                ):
                    raise
                self._edit_config(dom, lambda root: root.find("devices").append(ET.fromstring(xml)))
        LOG.info("libvirt.interface_attached", server=server.id, port=vif.port_id, mac=vif.mac)

    async def detach_interface(self, server: Server, vif: Vif) -> None:
        dom = self._require(server.id)
        with failing(f"detaching port {vif.port_id} from {server.id}"):
            iface = self._find_interface(dom, vif.mac)
            if iface is None:
                return
            flags = self._device_flags(dom)
            try:
                dom.detachDeviceFlags(ET.tostring(iface, encoding="unicode"), flags)
            except libvirt.libvirtError as exc:
                if (
                    flags & libvirt.VIR_DOMAIN_AFFECT_LIVE
                    or exc.get_error_code() not in UNSUPPORTED
                ):
                    raise

                def drop(root: ET.Element) -> None:
                    devices = root.find("devices")
                    if devices is None:
                        return
                    for found in list(devices.iterfind("interface")):
                        mac = found.find("mac")
                        if mac is not None and mac.get("address", "").lower() == vif.mac.lower():
                            devices.remove(found)

                self._edit_config(dom, drop)
        LOG.info("libvirt.interface_detached", server=server.id, port=vif.port_id, mac=vif.mac)

    async def snapshot(self, server: Server, target: Path) -> str:
        """The root disk and its backing image as one standalone qcow2 file at `target`;
        a running guest is paused meanwhile so the copy is consistent."""
        dom = self._require(server.id)
        source = self._root_path(dom, server.id)
        with failing(f"snapshotting {server.id}"):
            running = dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING
            if running:
                dom.suspend()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            await disks.convert(source, target, "qcow2", force_share=dom.isActive())
        finally:
            if running:
                with failing(f"resuming {server.id} after its snapshot"):
                    dom.resume()
        LOG.info("libvirt.snapshot_written", server=server.id, target=str(target))
        return "qcow2"
