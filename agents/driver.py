"""The driver contract: what a hypervisor driver implements, shaped after Nova's ComputeDriver.

A driver holds only what is specific to its hypervisor. Everything else (registering the
host, heartbeats, taking work from the queue, reporting events) is the agent runtime's,
shared by every driver. Methods a driver cannot do raise NotImplementedError, which the
runtime reports as a failed action.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar, Protocol

import msgspec

from hvmesh.core.config import Config
from hvmesh.core.metadata.configdrive import build_config_drive
from hvmesh.core.metadata.content import config_drive_files, load_vendor_data
from hvmesh.core.protocol.models import Flavor, Image, Server, Vif


class DriverError(Exception):
    """The hypervisor refused or failed an operation; the message says why."""


class NodeInventory(msgspec.Struct, kw_only=True):
    """What the hypervisor has, before reserved amounts and allocation ratios."""

    vcpus: int
    memory_mb: int
    local_gb: int
    hypervisor_type: str
    hypervisor_version: str = ""
    cpu_arch: str = "x86_64"
    #: Custom resource classes (PCI devices as CUSTOM_PCI_<ALIAS>, ...) and how many.
    resources: dict[str, int] = msgspec.field(default_factory=dict)
    traits: list[str] = msgspec.field(default_factory=list)


class InstanceInfo(msgspec.Struct, kw_only=True):
    power_state: int


class ImageSource(Protocol):
    """The agent's image cache, as drivers see it (agents/image_cache.py)."""

    async def fetch(self, image: Image) -> Path:
        """The image's bytes as a local file, fetched and sha256-verified once per host."""
        ...

    async def fetch_id(self, image_id: str) -> Path:
        """As fetch, for an image known by id (a kernel_id or ramdisk_id property)."""
        ...


PowerListener = Callable[[str, int], Awaitable[None]]


class ComputeDriver:
    """Base class of every hypervisor driver."""

    #: Registered name (`hvmesh agent --driver NAME`).
    name: ClassVar[str] = ""
    #: What this driver can do, as Nova's driver capabilities.
    capabilities: ClassVar[dict[str, bool]] = {}

    def __init__(self, host: str, config: Config) -> None:
        self.host = host
        self.config = config
        #: Set by the agent runtime before init_host: where image files come from.
        self.image_cache: ImageSource | None = None
        #: Set by the agent runtime: called when the hypervisor reports that an
        #: instance's power state changed (lifecycle events), with the new state.
        self.power_listener: PowerListener | None = None

    async def emit_power(self, server_id: str, power_state: int) -> None:
        """Report a power-state change the hypervisor announced, if anyone listens."""
        if self.power_listener is not None:
            await self.power_listener(server_id, power_state)

    def healthy(self) -> bool:
        """Whether the hypervisor is reachable now; while not, the host stops heartbeating
        (and so counts as down) until it is again."""
        return True

    async def write_config_drive(self, server: Server, path: Path) -> Path:
        """Write the server's config drive (ISO 9660, label config-2: what the metadata
        service serves) to `path`; drivers attach it where guests have no metadata
        network. Built in a thread: it holds the whole ISO in memory for a moment."""
        files = config_drive_files(server, load_vendor_data(self.config.metadata.vendor_data))
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(build_config_drive, files, path)
        return path

    async def images(self) -> ImageSource:
        if self.image_cache is None:
            raise DriverError("this agent has no image cache")
        return self.image_cache

    async def init_host(self) -> None:
        """Connect to the hypervisor; called once before anything else."""

    async def cleanup_host(self) -> None:
        """Release connections; called once at shutdown."""

    async def get_inventory(self) -> NodeInventory:
        raise NotImplementedError

    async def list_instances(self) -> list[str]:
        """Server ids of the instances this hypervisor runs."""
        raise NotImplementedError

    async def get_info(self, server_id: str) -> InstanceInfo:
        """Power state of one instance; DriverError if it does not exist."""
        raise NotImplementedError

    async def spawn(self, server: Server, image: Image | None) -> None:
        """Create and start the instance. Must be idempotent for a server id."""
        raise NotImplementedError

    async def destroy(self, server_id: str) -> None:
        """Stop and remove the instance; no error if it is already gone."""
        raise NotImplementedError

    # --- power ----------------------------------------------------------------------------

    async def reboot(self, server: Server, reboot_type: str) -> None:
        """Restart the guest: "SOFT" asks it to, "HARD" resets it. Ends running."""
        raise NotImplementedError

    async def power_off(self, server_id: str) -> None:
        raise NotImplementedError

    async def power_on(self, server: Server) -> None:
        raise NotImplementedError

    async def pause(self, server_id: str) -> None:
        raise NotImplementedError

    async def unpause(self, server_id: str) -> None:
        raise NotImplementedError

    async def suspend(self, server_id: str) -> None:
        raise NotImplementedError

    async def resume(self, server: Server) -> None:
        raise NotImplementedError

    async def rebuild(self, server: Server, image: Image | None) -> None:
        """Recreate the instance from `image` on this host, keeping its id and claim.

        The default is Nova's: destroy, then spawn again.
        """
        await self.destroy(server.id)
        await self.spawn(server, image)

    async def get_console_output(self, server_id: str) -> str:
        raise NotImplementedError

    # --- resize and cold migration (source: migrate_disk_and_power_off, confirm, revert;
    # destination: finish_migration, and destroy on a revert) ------------------------------

    async def migrate_disk_and_power_off(self, server: Server, dest: str, flavor: Flavor) -> None:
        """Source: power the instance off and make its disk available to `dest`."""
        raise NotImplementedError

    async def finish_migration(self, server: Server, image: Image | None, power_on: bool) -> None:
        """Destination: create the instance from the migrated disk, with its new flavor."""
        raise NotImplementedError

    async def confirm_migration(self, server_id: str) -> None:
        """Source: the move is confirmed; remove what is left of the instance here."""
        raise NotImplementedError

    async def finish_revert_migration(self, server: Server, power_on: bool) -> None:
        """Source: the move is reverted; bring the instance back as it was."""
        raise NotImplementedError

    # --- live migration ---------------------------------------------------------------------

    async def check_can_live_migrate_destination(self, server: Server, source: str) -> None:
        """Destination: raise DriverError if the instance cannot come here live."""
        raise NotImplementedError

    async def check_can_live_migrate_source(self, server: Server, dest: str) -> None:
        """Source: raise DriverError if the instance cannot leave live."""
        raise NotImplementedError

    async def pre_live_migration(self, server: Server) -> None:
        """Destination: prepare to receive the instance."""
        raise NotImplementedError

    async def live_migration(self, server: Server, dest: str) -> None:
        """Source: move the running instance to `dest`; on return it runs there."""
        raise NotImplementedError

    async def post_live_migration_at_destination(self, server: Server) -> None:
        """Destination: the instance has arrived and runs here."""
        raise NotImplementedError

    async def rollback_live_migration_at_destination(self, server_id: str) -> None:
        """Destination: the migration failed; remove whatever was prepared here."""
        raise NotImplementedError

    # --- interfaces and snapshots -----------------------------------------------------------

    async def attach_interface(self, server: Server, vif: Vif) -> None:
        """Plug one more interface into the instance (hot-plug when it runs)."""
        raise NotImplementedError

    async def detach_interface(self, server: Server, vif: Vif) -> None:
        """Unplug the interface with `vif`'s MAC; no error if it is already gone."""
        raise NotImplementedError

    async def snapshot(self, server: Server, target: Path) -> str:
        """Write the instance's root disk as a standalone image file at `target`;
        returns its disk format ("qcow2", "raw", ...)."""
        raise NotImplementedError
