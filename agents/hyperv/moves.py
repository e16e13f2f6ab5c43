"""Resize in place and live migration of Hyper-V VMs: Set-VMProcessor/Set-VMMemory on a VM that is off, and Move-VM with its storage to another Hyper-V host.

Resize: migrate_disk_and_power_off powers the VM off (only to this host: the driver
declares supports_migrate_to_same_host and moves no disk between hosts cold);
finish_migration gives it the new flavor's processors and memory and starts it if
asked; finish_revert_migration gives it back the old flavor's; confirm_migration has
nothing left to remove. The root disk keeps its size.

Live migration: the destination checks that it accepts VM migrations and has the
switches the ports need, and pre_live_migration puts the image's base disk in its image
cache (a differencing disk moves without its parent); the source runs Move-VM
-IncludeStorage to the destination host, named by its hvmesh host name (which must be
the Hyper-V host's name), into the same [hyperv] vhd_path there.
"""

from __future__ import annotations

from typing import Any

from hvmesh.agents.driver import DriverError
from hvmesh.agents.hyperv import scripts
from hvmesh.agents.hyperv.files import HypervFiles
from hvmesh.core import log
from hvmesh.core.protocol.records import Flavor, Image, Server

LOG = log.get_logger(__name__)

MIB = 1 << 20


class HypervMoves(HypervFiles):
    # --- resize in place --------------------------------------------------------------------

    async def _set_flavor(self, server_id: str, flavor: Flavor) -> None:
        await self.vm_ps(
            scripts.RESIZE,
            f"giving {server_id} {flavor.vcpus} processors and {flavor.ram_mb} MB",
            server_id,
            vcpus=flavor.vcpus,
            memory=flavor.ram_mb * MIB,
        )

    async def migrate_disk_and_power_off(self, server: Server, dest: str, flavor: Flavor) -> None:
        if dest != self.host:
            raise DriverError(
                f"the Hyper-V driver resizes {server.id} in place only, not to {dest}"
            )
        await self.power_off(server.id)
        LOG.info("hyperv.resize_ready", server=server.id, flavor=flavor.name)

    async def finish_migration(self, server: Server, image: Image | None, power_on: bool) -> None:
        await self.require_state(server.id)
        await self._set_flavor(server.id, server.flavor)
        if power_on:
            await self.power_on(server)
        LOG.info("hyperv.resized", server=server.id, flavor=server.flavor.name)

    async def confirm_migration(self, server_id: str) -> None:
        """In place: the VM is the resized instance; nothing else was made."""

    async def finish_revert_migration(self, server: Server, power_on: bool) -> None:
        state = await self.require_state(server.id)
        if state != "Off":
            await self.power_off(server.id)
        await self._set_flavor(server.id, server.flavor)
        if power_on:
            await self.power_on(server)
        LOG.info("hyperv.resize_reverted", server=server.id)

    # --- live migration ---------------------------------------------------------------------

    async def _migration_host(self) -> dict[str, Any]:
        found = await self.ps(scripts.MIGRATION_READY, "reading the host's migration settings")
        host = found[0] if found and isinstance(found[0], dict) else {}
        if not host.get("VirtualMachineMigrationEnabled"):
            raise DriverError(
                f"Hyper-V host {self.cfg.host} does not accept VM migrations (Enable-VMMigration)"
            )
        return host

    async def check_can_live_migrate_destination(self, server: Server, source: str) -> None:
        await self._migration_host()
        for vif in server.network_info:
            switch = self.switch_for(vif)
            if self.switches and switch not in self.switches:
                raise DriverError(f"virtual switch {switch!r} is not on {self.host}")

    async def check_can_live_migrate_source(self, server: Server, dest: str) -> None:
        state = await self.require_state(server.id)
        if state not in ("Running", "Paused"):
            raise DriverError(f"cannot live-migrate {server.id}: it is {state}")
        await self._migration_host()

    async def pre_live_migration(self, server: Server) -> None:
        """The image's base disk into this host's cache: its file fetched by id, its
        format read from the file's signature (a VHDX begins with "vhdxfile")."""
        if not server.image_id:
            raise DriverError(f"server {server.id} has no image to cache on {self.host}")
        local = await (await self.images()).fetch_id(server.image_id)
        with local.open("rb") as f:
            ext = "vhdx" if f.read(8) == b"vhdxfile" else "vhd"
        await self.cache_file(local, ext)

    async def live_migration(self, server: Server, dest: str) -> None:
        await self.vm_ps(
            scripts.MOVE_VM,
            f"moving {server.id} to {dest}",
            server.id,
            dest=dest,
            dir=self.instance_dir(server.id),
        )
        await self.remove_path(self.instance_dir(server.id))
        self._powers.pop(server.id, None)
        LOG.info("hyperv.live_migrated", server=server.id, dest=dest)

    async def post_live_migration_at_destination(self, server: Server) -> None:
        await self.require_state(server.id)

    async def rollback_live_migration_at_destination(self, server_id: str) -> None:
        if await self.vm_state(server_id) is None:
            await self.remove_path(self.instance_dir(server_id))
