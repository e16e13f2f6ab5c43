"""The driver contract: what a hypervisor driver implements, shaped after Nova's ComputeDriver.

A driver holds only what is specific to its hypervisor. Everything else (registering the
host, heartbeats, taking work from the queue, reporting events) is the agent runtime's,
shared by every driver.

Errors: a method raises DriverError when the hypervisor refused or failed the operation
(the message says why, for an operator), and NotImplementedError when the driver cannot
do it at all. The runtime reports either as a failed step of the work item. What a
driver can do is also declared up front in `capabilities` (Nova's driver capabilities):
the runtime turns them into traits of the host (core/protocol/actions.py
CAPABILITY_TRAITS), and the API refuses an action whose capability the server's host
lacks (ACTION_CAPABILITIES) before anything runs.
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
from hvmesh.core.protocol.actions import capability_trait
from hvmesh.core.protocol.records import Flavor, Image, Server, Vif


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
    """What the hypervisor says of one instance: its power state (core/protocol/states.py)."""

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

#: Console protocols a driver may open (capabilities supports_serial_console and
#: supports_vnc_console): "serial" is the guest's first serial port, "vnc" the RFB stream
#: of its graphical console, both as raw bytes.
CONSOLE_PROTOCOLS = ("serial", "vnc")
#: The most bytes one ConsoleChannel.read returns.
CONSOLE_CHUNK = 16384


class ConsoleChannel(Protocol):
    """A guest console a driver opened: raw bytes both ways until either end closes it.

    The runtime reads only as fast as the viewer takes the bytes (flow control), so a
    channel must not buffer more than a chunk itself: the hypervisor holds the rest.
    """

    async def read(self) -> bytes:
        """The next bytes from the guest, at most CONSOLE_CHUNK; b"" once the console closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Bytes to the guest (keystrokes, a VNC client's messages)."""
        ...

    async def close(self) -> None:
        """Release the console; safe to call twice."""
        ...


class ComputeDriver:
    """Base class of every hypervisor driver.

    One instance serves one host. Methods that act on an instance get its server id, or
    the server record when they need more (flavor, image properties, interfaces); the
    server id is the instance's only name at this layer, and whatever the hypervisor
    calls it stays inside the driver. The runtime runs at most one work item per server
    at a time, but work for different servers runs concurrently (`[compute] workers`),
    and a work item can be delivered twice: methods that create something must accept
    finding it already made.

    After each step the runtime reads the instance's power state with `get_info`, so a
    method need not report it; it must only leave the instance in the state it promises.
    """

    #: Registered name (`hvmesh agent --driver NAME`); written into the host record.
    name: ClassVar[str] = ""
    #: What this driver can do, as Nova's driver capabilities: each one set True becomes
    #: a trait of the host (core/protocol/actions.py CAPABILITY_TRAITS), and an action
    #: that needs one the host lacks is refused by the API (ACTION_CAPABILITIES). A
    #: capability left out counts as False. Declare only what the methods really do.
    capabilities: ClassVar[dict[str, bool]] = {}

    def __init__(self, host: str, config: Config) -> None:
        self.host = host
        self.config = config
        #: Set by the agent runtime before init_host: where image files come from.
        self.image_cache: ImageSource | None = None
        #: Set by the agent runtime: called when the hypervisor reports that an
        #: instance's power state changed (lifecycle events), with the new state.
        self.power_listener: PowerListener | None = None
        #: Set by the agent runtime: called when the hypervisor's resources changed, to
        #: write the host record again from `get_inventory`.
        self.inventory_listener: Callable[[], Awaitable[None]] | None = None

    @classmethod
    async def node_drivers(cls, host: str, config: Config) -> list[ComputeDriver]:
        """The drivers of the providers an agent started for `host` runs, one per node.

        Most drivers manage one node, named `host`: the default. A driver that fronts many
        (each ESXi host of a cluster, each node of a bare-metal service) returns one driver
        per node, each named as its host record will be (letters, digits, '-' and '_'),
        sharing connections as it sees fit; the agent runs one runtime per driver. Called
        before init_host; DriverError when the nodes cannot be listed.
        """
        return [cls(host, config)]

    @classmethod
    def capability_traits(cls) -> set[str]:
        """The host traits this driver's capabilities stand for (those set True)."""
        return {capability_trait(name) for name, on in cls.capabilities.items() if on}

    # --- helpers every driver shares --------------------------------------------------------

    async def emit_power(self, server_id: str, power_state: int) -> None:
        """Report a power-state change the hypervisor announced, if anyone listens."""
        if self.power_listener is not None:
            await self.power_listener(server_id, power_state)

    async def inventory_changed(self) -> None:
        """Report that the hypervisor's resources changed (a host joined or left, a
        datastore grew): the runtime reads `get_inventory` again and updates the host."""
        if self.inventory_listener is not None:
            await self.inventory_listener()

    async def write_config_drive(self, server: Server, path: Path) -> Path:
        """Write the server's config drive (ISO 9660, label config-2: what the metadata
        service serves) to `path`; drivers attach it where guests have no metadata
        network. Built in a thread: it holds the whole ISO in memory for a moment."""
        files = config_drive_files(server, load_vendor_data(self.config.metadata.vendor_data))
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(build_config_drive, files, path)
        return path

    async def images(self) -> ImageSource:
        """The agent's image cache; DriverError when the driver runs without an agent."""
        if self.image_cache is None:
            raise DriverError("this agent has no image cache")
        return self.image_cache

    # --- the host -----------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Whether the hypervisor is reachable now; while not, the host stops heartbeating
        (and so counts as down) until it is again.

        Called before every heartbeat, on the event loop: answer from what is known (a
        connection's state), without I/O. The default is always True.
        """
        return True

    async def init_host(self) -> None:
        """Connect to the hypervisor and make ready what the driver needs on the host.

        Called once, before anything else (before `get_inventory`, and before the runtime
        reconciles the instances found here with the server records). An exception here
        stops the agent from starting: raise DriverError saying what is missing. The
        default does nothing.
        """

    async def cleanup_host(self) -> None:
        """Release connections and stop background tasks; called once at shutdown.

        Called after the agent has stopped taking work, as the last step of stopping;
        it should not raise. The default does nothing.
        """

    async def get_inventory(self) -> NodeInventory:
        """What the host has: the hypervisor's real totals, before the `[compute]` reserved
        amounts and allocation ratios (the runtime applies those), and its own traits.

        Called when the agent starts, to write the host record; capability traits are
        added by the runtime, not here. DriverError when the hypervisor cannot be read.
        Every driver implements it.
        """
        raise NotImplementedError

    async def list_instances(self) -> list[str]:
        """Server ids of the instances this hypervisor runs, whatever their power state.

        Called at start (instances no server here accounts for are destroyed) and for
        every power-state report. Only instances hvmesh made count: a domain or VM the
        driver cannot map to a server id is left out. DriverError when the hypervisor
        cannot be listed.
        """
        raise NotImplementedError

    async def get_info(self, server_id: str) -> InstanceInfo:
        """The instance's power state as the hypervisor sees it now.

        DriverError when no such instance exists here: the runtime reads that as
        NOSTATE, so it must be the error for "not found", not for a hypervisor that is
        unreachable (any other exception is reported as a failure to read the state).
        """
        raise NotImplementedError

    # --- spawn, destroy, rebuild --------------------------------------------------------------

    async def spawn(self, server: Server, image: Image | None) -> None:
        """Create the instance of `server` from `image` and start it; on return it runs.

        `server` carries the flavor, image properties, interfaces (`network_info`) and
        config drive wish; `image` is None for a server whose image is gone. Idempotent
        for a server id: an instance already here is no error (the work was delivered
        again). On failure, remove everything this call made (disks, definitions,
        interfaces, config drive) so the host is as it was, then raise DriverError: the
        conductor releases the claim and reschedules the server to another host.
        """
        raise NotImplementedError

    async def destroy(self, server_id: str) -> None:
        """Stop the instance at once and remove it with everything it has on this host
        (disks, definition, interfaces, console log).

        No error when it is already gone, or was never made: destroy also cleans up after
        failed and abandoned work. DriverError when the hypervisor refuses; the server
        then goes to ERROR and can be deleted again.
        """
        raise NotImplementedError

    async def rebuild(self, server: Server, image: Image | None) -> None:
        """Recreate the instance from `image` on this host, keeping its server id, its
        interfaces and its claim; on return it runs (the runtime powers it off afterwards
        when the server was stopped).

        Also the destination step of an evacuation, where no instance exists here yet.
        On failure, leave no half-made instance behind and raise DriverError; the server
        goes to ERROR. The default is Nova's: destroy, then spawn again.
        """
        await self.destroy(server.id)
        await self.spawn(server, image)

    # --- power ----------------------------------------------------------------------------

    async def reboot(self, server: Server, reboot_type: str) -> None:
        """Restart the guest: "SOFT" asks the guest OS to, "HARD" resets the instance.

        On return the instance runs. A HARD reboot must work from any power state the
        state machine allows it from (running, shut down, paused, suspended, crashed);
        a driver may fall back to a hard reset when a soft one is not honoured in time.
        DriverError when the instance is not here or does not come back up.
        """
        raise NotImplementedError

    async def power_off(self, server_id: str) -> None:
        """Shut the instance down (gracefully first, where the hypervisor can); on return
        it is off (SHUTDOWN). An instance already off is no error; one that is not here is
        a DriverError. Also the first step of shelve."""
        raise NotImplementedError

    async def power_on(self, server: Server) -> None:
        """Start the instance that is off; on return it runs. Gets the server record, so a
        driver can restore what starting needs (interfaces, config drive). Also what
        unshelves a server shelved on this host. DriverError when it does not start."""
        raise NotImplementedError

    async def pause(self, server_id: str) -> None:
        """Freeze the instance in memory (POWER_PAUSED): it keeps its memory but gets no
        CPU time. Undone by unpause; a stronger form is suspend. An instance that is off
        cannot be paused: DriverError naming it, and it stays off."""
        raise NotImplementedError

    async def unpause(self, server_id: str) -> None:
        """Let the paused instance run again, as it was when paused (a running one stays
        running). An instance that is off: DriverError naming it, and it stays off."""
        raise NotImplementedError

    async def suspend(self, server_id: str) -> None:
        """Save the instance's memory to disk and stop it (POWER_SUSPENDED): it holds no
        CPU or memory of the host until resume. An instance that is off cannot be
        suspended: DriverError naming it, and it stays off."""
        raise NotImplementedError

    async def resume(self, server: Server) -> None:
        """Bring the suspended instance back from its saved state; on return it runs as it
        was when suspended."""
        raise NotImplementedError

    async def get_console_output(self, server_id: str) -> str:
        """The guest's console (serial) output, whole; the runtime keeps the last lines
        when asked for fewer.

        Answered on a request, not as work, so it must be quick. DriverError when the
        instance is not here (the API answers 404); NotImplementedError when the driver
        keeps no console log (the API answers 409).
        """
        raise NotImplementedError

    async def open_console(self, server_id: str, protocol: str) -> ConsoleChannel:
        """Open the instance's live console, `protocol` one of CONSOLE_PROTOCOLS.

        Declared by the capabilities supports_serial_console and supports_vnc_console.
        Answered on a request, so it must be quick. DriverError when the instance is not
        here or not running (the proxy refuses the session naming it); NotImplementedError
        when the driver has no such console (409).
        """
        raise NotImplementedError

    # --- resize and cold migration (source: migrate_disk_and_power_off, confirm, revert;
    # destination: finish_migration, and destroy on a revert) ------------------------------

    async def migrate_disk_and_power_off(self, server: Server, dest: str, flavor: Flavor) -> None:
        """Source: power the instance off and make its disk available to host `dest`,
        where `finish_migration` will build the instance with `flavor`.

        The instance stays defined here, off, until confirm_migration or
        finish_revert_migration. `dest` is this host only for a driver that declares
        supports_migrate_to_same_host (a resize in place). On failure leave the instance
        here whole (disk and definition), so the move can be rolled back to the server as
        it was, and raise DriverError.
        """
        raise NotImplementedError

    async def finish_migration(self, server: Server, image: Image | None, power_on: bool) -> None:
        """Destination: create the instance from the disk migrate_disk_and_power_off made
        available, with the new flavor `server.flavor`; running if `power_on`, else off.

        On failure remove whatever this call made here and raise DriverError (the
        server goes to ERROR: its guest may be half moved).
        """
        raise NotImplementedError

    async def confirm_migration(self, server_id: str) -> None:
        """Source: the move is confirmed; remove what is left of the instance here (its
        definition and disk). No error when it is already gone."""
        raise NotImplementedError

    async def finish_revert_migration(self, server: Server, power_on: bool) -> None:
        """Source: the move is reverted (the destination's copy is destroyed separately);
        bring the instance back as it was, with its old flavor `server.flavor`, running if
        `power_on`, else off."""
        raise NotImplementedError

    # --- live migration (capability supports_live_migration) ------------------------------

    async def check_can_live_migrate_destination(self, server: Server, source: str) -> None:
        """Destination: raise DriverError if the instance cannot come here live from
        `source` (CPU, devices, storage). Checks only: changes nothing."""
        raise NotImplementedError

    async def check_can_live_migrate_source(self, server: Server, dest: str) -> None:
        """Source: raise DriverError if the instance cannot leave live for `dest` (it is
        not here, has devices that cannot move). Checks only: changes nothing."""
        raise NotImplementedError

    async def pre_live_migration(self, server: Server) -> None:
        """Destination: prepare to receive the instance (disks, interfaces, an incoming
        paused instance). What it makes is removed by
        rollback_live_migration_at_destination if the migration fails."""
        raise NotImplementedError

    async def live_migration(self, server: Server, dest: str) -> None:
        """Source: move the running (or paused) instance to `dest`; on return it runs
        there and nothing of it is left here.

        On failure the instance must still run here, unharmed, and DriverError is
        raised: the migration is rolled back and the server stays on the source.
        """
        raise NotImplementedError

    async def post_live_migration_at_destination(self, server: Server) -> None:
        """Destination: the instance has arrived; finish what it needs here (a persistent
        definition, so it survives a restart of the hypervisor). DriverError if it is not
        here."""
        raise NotImplementedError

    async def rollback_live_migration_at_destination(self, server_id: str) -> None:
        """Destination: the migration failed; remove whatever pre_live_migration made
        here. No error when nothing is left."""
        raise NotImplementedError

    # --- interfaces (capability supports_attach_interface) and snapshots ----------------

    async def attach_interface(self, server: Server, vif: Vif) -> None:
        """Plug one more interface, `vif`, into the instance: hot-plugged when it runs, and
        kept in its definition so it survives a restart. An interface with that MAC
        already plugged in is no error. On failure the instance is left without it and
        DriverError is raised (the port is let go)."""
        raise NotImplementedError

    async def detach_interface(self, server: Server, vif: Vif) -> None:
        """Unplug the interface with `vif`'s MAC, live and from the definition; no error
        if it is already gone. On failure it stays plugged in (DriverError)."""
        raise NotImplementedError

    async def snapshot(self, server: Server, target: Path) -> str:
        """Write the instance's root disk as a standalone image file at `target` (no
        backing file: it boots on any host); returns its disk format ("qcow2", "raw", ...).

        The step of createImage (capability supports_snapshot); the runtime uploads the
        file to the image store afterwards, so the driver only writes it. The instance
        must be consistent in the copy (pause a running guest meanwhile, as Nova's cold
        snapshot) and left in the power state it had. On failure remove the partial file
        and raise DriverError; the image is deleted and the server keeps its state."""
        raise NotImplementedError
