"""Moving a libvirt instance: resize and cold migration, live migration.

Resize to the same host keeps the disk and saves the old definition for a revert; to
another host the stopped guest's disk is flattened and uploaded into the destination's
pool (transfer.py). Live migration is libvirt's peer-to-peer migration to
[libvirt] live_migration_uri, copying the disk's overlay over an empty one the
destination made over the same cached image (NON_SHARED_INC).
"""

from __future__ import annotations

import asyncio
import shutil
import xml.etree.ElementTree as ET

import libvirt

from hvmesh.agents.driver import DriverError
from hvmesh.agents.libvirt import disks, pci, transfer
from hvmesh.agents.libvirt.base import (
    LIVE_MIGRATION_FLAGS,
    PRE_RESIZE_XML,
    LibvirtBase,
    failing,
)
from hvmesh.core import log
from hvmesh.core.protocol.records import Flavor, Image, Server

LOG = log.get_logger(__name__)


class LibvirtMoves(LibvirtBase):
    # --- resize and cold migration ---------------------------------------------------------

    async def migrate_disk_and_power_off(self, server: Server, dest: str, flavor: Flavor) -> None:
        """Power off; to the same host keep the disk (and the definition, for a revert),
        to another host copy it into the destination's pool."""
        dom = self._require(server.id)
        if dest == self.host:
            await self.power_off(server.id)
            saved = self.instance_dir(server.id) / PRE_RESIZE_XML
            saved.parent.mkdir(parents=True, exist_ok=True)
            with failing(f"saving the definition of {server.id}"):
                saved.write_text(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            return
        source = self._root_path(dom, server.id)
        dest_uri = self.config.libvirt.live_migration_uri % dest
        await self.power_off(server.id)
        flat = self.instance_dir(server.id) / "migrating.qcow2"
        flat.parent.mkdir(parents=True, exist_ok=True)
        try:
            await disks.convert(source, flat, "qcow2")
            info = await disks.image_info(flat)
            await asyncio.to_thread(
                transfer.upload,
                dest_uri,
                self.config.libvirt.storage_pool,
                disks.root_volume_name(server.id),
                flat,
                int(info.get("virtual-size", 0)),
            )
        finally:
            flat.unlink(missing_ok=True)

    async def finish_migration(self, server: Server, image: Image | None, power_on: bool) -> None:
        """(Re)define the domain with the server's new flavor around the disk that came
        with it, grown to the new flavor's size; start it if asked."""
        pool = self._pool()
        root = disks.find_volume(pool, disks.root_volume_name(server.id))
        if root is None:
            raise DriverError(f"no migrated root disk of {server.id} in this host's pool")
        with failing(f"growing the root disk of {server.id}"):
            disks.grow(root, server.flavor.disk_gb * disks.GIB)
        props = image.properties if image is not None else server.image_properties
        dom = await self._define(server, server.flavor, props, root)
        if power_on:
            await self._start(dom, server.id)

    async def confirm_migration(self, server_id: str) -> None:
        saved = self.instance_dir(server_id) / PRE_RESIZE_XML
        if saved.exists():  # resized in place: the instance here is the resized one
            saved.unlink()
            return
        await self.destroy(server_id)

    async def finish_revert_migration(self, server: Server, power_on: bool) -> None:
        saved = self.instance_dir(server.id) / PRE_RESIZE_XML
        if saved.exists():  # resized in place: the old definition comes back (the disk
            # keeps any growth: a disk never shrinks)
            await self.power_off(server.id)
            with failing(f"restoring the definition of {server.id}"):
                self._conn.get().defineXML(saved.read_text())
            saved.unlink()
        dom = self._require(server.id)
        if power_on:
            with failing(f"starting {server.id}"):
                if not dom.isActive():
                    await asyncio.to_thread(dom.create)

    # --- live migration -----------------------------------------------------------------------

    async def check_can_live_migrate_destination(self, server: Server, source: str) -> None:
        dom = self._lookup(server.id)
        if dom is not None and dom.isActive():
            raise DriverError(f"instance {server.id} already runs on {self.host}")
        if pci.requested(server.flavor.extra_specs):
            raise DriverError(f"instance {server.id} has PCI devices: it cannot move live")
        self._pool()

    async def check_can_live_migrate_source(self, server: Server, dest: str) -> None:
        dom = self._require(server.id)
        if not dom.isActive():
            raise DriverError(f"instance {server.id} is not running: migrate it cold instead")
        root = ET.fromstring(dom.XMLDesc(0))
        if root.find("devices/hostdev") is not None:
            raise DriverError(f"instance {server.id} has PCI devices: it cannot move live")

    async def pre_live_migration(self, server: Server) -> None:
        """An empty overlay over the same (cached) image for the incoming disk copy, the
        kernel files, and the directories the domain's definition names."""
        cache = await self.images()
        base = await cache.fetch_id(server.image_id)
        info = await disks.image_info(base)
        fmt = str(info.get("format", ""))
        virtual = int(info.get("virtual-size", 0))
        capacity = max(server.flavor.disk_gb * disks.GIB, virtual)
        pool = self._pool()
        with failing(f"creating the incoming disk of {server.id}"):
            disks.create_overlay(pool, disks.root_volume_name(server.id), base, fmt, capacity)
        for key in ("kernel_id", "ramdisk_id"):
            if key in server.image_properties:
                await cache.fetch_id(server.image_properties[key])
        self.console_log(server.id).parent.mkdir(parents=True, exist_ok=True)
        self.instance_dir(server.id).mkdir(parents=True, exist_ok=True)

    async def live_migration(self, server: Server, dest: str) -> None:
        dom = self._require(server.id)
        uri = self.config.libvirt.live_migration_uri % dest
        with failing(f"live migrating {server.id} to {uri}"):
            await asyncio.to_thread(dom.migrateToURI3, uri, {}, LIVE_MIGRATION_FLAGS)
        LOG.info("libvirt.live_migrated", server=server.id, dest=dest)
        with failing(f"removing the volumes {server.id} left here"):
            disks.delete_server_volumes(self._pool(), server.id)
        shutil.rmtree(self.instance_dir(server.id), ignore_errors=True)

    async def post_live_migration_at_destination(self, server: Server) -> None:
        dom = self._require(server.id)
        with failing(f"checking {server.id} after its live migration"):
            if not dom.isPersistent():
                self._conn.get().defineXML(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))

    async def rollback_live_migration_at_destination(self, server_id: str) -> None:
        await self.destroy(server_id)
