"""The fake driver: an in-memory hypervisor with configurable delays and failures.

It is what `hvmesh up --fake-hosts N` and the tests run; thousands of fake hosts fit in
one process. Settings come from the [fake] config section: `fail_rate` fails spawns at
random, `fail_steps` fails named driver steps always (to exercise rollbacks). Each
instance keeps a console log of what happened to it, as a guest's serial console would.
`FakeDriver.lacking(...)` makes a fake driver class without some capabilities, for
tests of what the API refuses on such hosts.
"""

from __future__ import annotations

import asyncio
import collections
import random
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

from hvmesh.agents.driver import (
    ComputeDriver,
    ConsoleChannel,
    DriverError,
    InstanceInfo,
    NodeInventory,
)
from hvmesh.agents.fake.console import FakeConsole
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Flavor, Image, Server, Vif
from hvmesh.core.protocol.resources import parse_counts, pci_class
from hvmesh.plugins import hookimpl

SNAPSHOT_MAGIC = "hvmesh-fake-snapshot"


class FakeDriver(ComputeDriver):
    name: ClassVar[str] = "fake"
    capabilities: ClassVar[dict[str, bool]] = {
        "supports_pause": True,
        "supports_suspend": True,
        "supports_resize": True,
        "supports_attach_interface": True,
        "supports_evacuate": True,
        "supports_live_migration": True,
        "supports_pci_passthrough": True,  # [fake] pci_devices, claimed as resources
        "supports_snapshot": True,  # a header naming the guest, then its disk's bytes
        "supports_serial_console": True,  # an echoing terminal (agents/fake/console.py)
        "supports_vnc_console": False,
        "supports_multiattach": False,
        # confirm_migration drops the instance: a move must leave the host
        "supports_migrate_to_same_host": False,
        # an image is only fetched and kept, never read: every format boots
        **{
            f"supports_image_type_{fmt}": True
            for fmt in ("aki", "ami", "ari", "iso", "qcow2", "raw", "vhd", "vhdx", "vmdk")
        },
    }

    @classmethod
    def lacking(cls, *capabilities: str, name: str = "") -> type[FakeDriver]:
        """A FakeDriver subclass that declares `capabilities` False, registered as `name`
        (default "fake-without-<capabilities>"); everything else is the fake driver's."""
        unknown = set(capabilities) - cls.capabilities.keys()
        if unknown:
            raise ValueError(f"the fake driver has no capability {', '.join(sorted(unknown))}")
        short = "-".join(c.removeprefix("supports_").replace("_", "-") for c in capabilities)
        name = name or f"fake-without-{short}"
        attrs = {
            "name": name,
            "capabilities": cls.capabilities | dict.fromkeys(capabilities, False),
        }
        class_name = "".join(part.title() for part in name.replace("_", "-").split("-"))
        return type(f"{class_name}Driver", (cls,), attrs)

    def __init__(self, host: str, config: Any) -> None:
        super().__init__(host, config)
        self.fake = config.fake
        self.instances: dict[str, int] = {}  # server id -> power state
        self.consoles: dict[str, list[str]] = {}
        self.disks: dict[str, Path] = {}  # server id -> the cached image file it boots from
        self.interfaces: dict[str, list[str]] = {}  # server id -> MACs plugged in
        # The last consoles opened, for tests to look into.
        self.open_consoles: collections.deque[FakeConsole] = collections.deque(maxlen=8)
        self._rng = random.Random()

    # --- helpers ----------------------------------------------------------------------------

    def _log(self, server_id: str, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.consoles.setdefault(server_id, []).append(f"[{stamp}] {line}")

    async def _step(self, step: str) -> None:
        """A simulated step: its delay, and its failure when [fake] fail_steps names it."""
        if self.fake.step_delay:
            await asyncio.sleep(self.fake.step_delay)
        if step in self.fake.fail_steps:
            raise DriverError(f"simulated {step} failure on {self.host}")

    def _require(self, server_id: str) -> None:
        if server_id not in self.instances:
            raise DriverError(f"instance {server_id} not found on {self.host}")

    def _set(self, server_id: str, power: int, line: str) -> None:
        self._require(server_id)
        self.instances[server_id] = power
        self._log(server_id, line)

    def _from(self, server_id: str, action: str, allowed: tuple[int, ...]) -> None:
        """DriverError unless the instance is in one of the `allowed` power states, as a
        hypervisor refuses to pause, suspend or unpause a guest that is not running."""
        self._require(server_id)
        now = self.instances[server_id]
        if now not in allowed:
            name = states.POWER_STATE_NAMES.get(now, str(now))
            raise DriverError(f"cannot {action} instance {server_id} on {self.host}: it is {name}")

    # --- the contract -----------------------------------------------------------------------

    async def get_inventory(self) -> NodeInventory:
        return NodeInventory(
            vcpus=self.fake.vcpus,
            memory_mb=self.fake.memory_mb,
            local_gb=self.fake.local_gb,
            hypervisor_type="fake",
            hypervisor_version="1.0",
            cpu_arch=self.fake.cpu_arch,
            traits=list(self.fake.traits),
            resources={
                pci_class(alias): n
                for alias, n in parse_counts(
                    ",".join(self.fake.pci_devices), "[fake] pci_devices"
                ).items()
            },
        )

    async def list_instances(self) -> list[str]:
        return list(self.instances)

    async def get_info(self, server_id: str) -> InstanceInfo:
        self._require(server_id)
        return InstanceInfo(power_state=self.instances[server_id])

    async def spawn(self, server: Server, image: Image | None) -> None:
        if server.id in self.instances:
            return
        if self.fake.spawn_delay:
            await asyncio.sleep(self.fake.spawn_delay)
        if self.fake.fail_rate and self._rng.random() < self.fake.fail_rate:
            raise DriverError(f"simulated spawn failure on {self.host}")
        await self._step("spawn")
        await self._boot_from(server, image)
        self.interfaces[server.id] = [vif.mac for vif in server.network_info]
        self.instances[server.id] = states.RUNNING
        self._log(server.id, f"booting {image.name if image else server.image_name}")
        self._log(server.id, f"{server.name} login:")

    async def _boot_from(self, server: Server, image: Image | None) -> None:
        """An image with uploaded data is fetched into the host's cache, as a real
        driver would before it boots; the instance records which file it uses."""
        if image is None or not image.checksum:
            return
        path = await (await self.images()).fetch(image)
        if path.stat().st_size != image.size:
            raise DriverError(
                f"cached image {path} has {path.stat().st_size} bytes, not {image.size}"
            )
        self.disks[server.id] = path
        self._log(server.id, f"root disk from {path}")

    async def attach_interface(self, server: Server, vif: Vif) -> None:
        await self._step("attach_interface")
        self._require(server.id)
        nics = self.interfaces.setdefault(server.id, [])
        if vif.mac not in nics:
            nics.append(vif.mac)
        self._log(server.id, f"interface {vif.mac} attached ({vif.ip})")

    async def detach_interface(self, server: Server, vif: Vif) -> None:
        await self._step("detach_interface")
        self._require(server.id)
        if vif.mac in self.interfaces.get(server.id, []):
            self.interfaces[server.id].remove(vif.mac)
        self._log(server.id, f"interface {vif.mac} detached")

    async def destroy(self, server_id: str) -> None:
        if self.fake.destroy_delay:
            await asyncio.sleep(self.fake.destroy_delay)
        await self._step("destroy")
        self.instances.pop(server_id, None)
        self.consoles.pop(server_id, None)
        self.disks.pop(server_id, None)
        self.interfaces.pop(server_id, None)

    async def reboot(self, server: Server, reboot_type: str) -> None:
        await self._step("reboot")
        self._set(server.id, states.RUNNING, f"{reboot_type.lower()} reboot")

    async def power_off(self, server_id: str) -> None:
        await self._step("power_off")
        self._set(server_id, states.SHUTDOWN, "power off")

    async def power_on(self, server: Server) -> None:
        await self._step("power_on")
        self._set(server.id, states.RUNNING, "power on")

    async def pause(self, server_id: str) -> None:
        await self._step("pause")
        self._from(server_id, "pause", (states.RUNNING, states.POWER_PAUSED))
        self._set(server_id, states.POWER_PAUSED, "paused")

    async def unpause(self, server_id: str) -> None:
        await self._step("unpause")
        self._from(server_id, "unpause", (states.POWER_PAUSED, states.RUNNING))
        self._set(server_id, states.RUNNING, "unpaused")

    async def suspend(self, server_id: str) -> None:
        await self._step("suspend")
        self._from(
            server_id, "suspend", (states.RUNNING, states.POWER_PAUSED, states.POWER_SUSPENDED)
        )
        self._set(server_id, states.POWER_SUSPENDED, "suspended to disk")

    async def resume(self, server: Server) -> None:
        await self._step("resume")
        self._set(server.id, states.RUNNING, "resumed")

    async def get_console_output(self, server_id: str) -> str:
        self._require(server_id)
        return "\n".join(self.consoles.get(server_id, [])) + "\n"

    async def open_console(self, server_id: str, protocol: str) -> ConsoleChannel:
        if protocol != "serial":
            raise NotImplementedError
        self._from(server_id, "open the console of", (states.RUNNING,))
        console = FakeConsole(server_id)
        self.open_consoles.append(console)
        return console

    async def migrate_disk_and_power_off(self, server: Server, dest: str, flavor: Flavor) -> None:
        await self._step("migrate_disk_and_power_off")
        self._set(server.id, states.SHUTDOWN, f"power off, disk copied to {dest}")

    async def finish_migration(self, server: Server, image: Image | None, power_on: bool) -> None:
        await self._step("finish_migration")
        self.instances[server.id] = states.RUNNING if power_on else states.SHUTDOWN
        self._log(server.id, f"migrated here with flavor {server.flavor.name}")

    async def confirm_migration(self, server_id: str) -> None:
        await self._step("confirm_migration")
        self.instances.pop(server_id, None)
        self.consoles.pop(server_id, None)
        self.disks.pop(server_id, None)
        self.interfaces.pop(server_id, None)

    async def finish_revert_migration(self, server: Server, power_on: bool) -> None:
        await self._step("finish_revert_migration")
        self.instances[server.id] = states.RUNNING if power_on else states.SHUTDOWN
        self._log(server.id, "migration reverted")

    async def check_can_live_migrate_destination(self, server: Server, source: str) -> None:
        await self._step("check_can_live_migrate_destination")

    async def check_can_live_migrate_source(self, server: Server, dest: str) -> None:
        await self._step("check_can_live_migrate_source")
        self._require(server.id)

    async def pre_live_migration(self, server: Server) -> None:
        await self._step("pre_live_migration")
        self.instances[server.id] = states.POWER_PAUSED  # the incoming copy waits, paused
        self._log(server.id, "incoming live migration")

    async def live_migration(self, server: Server, dest: str) -> None:
        await self._step("live_migration")
        self._require(server.id)
        self.instances.pop(server.id, None)
        self.consoles.pop(server.id, None)

    async def post_live_migration_at_destination(self, server: Server) -> None:
        await self._step("post_live_migration_at_destination")
        self._set(server.id, states.RUNNING, "live migration complete")

    async def snapshot(self, server: Server, target: Path) -> str:
        """A raw file: one line naming the guest (SNAPSHOT_MAGIC, server id and name,
        host), then the bytes of the disk it booted from, if it had one."""
        await self._step("snapshot")
        self._require(server.id)
        header = f"{SNAPSHOT_MAGIC} server={server.id} name={server.name} host={self.host}\n"
        disk = self.disks.get(server.id)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                out.write(header.encode())
                if disk is not None:
                    with disk.open("rb") as src:
                        shutil.copyfileobj(src, out)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise DriverError(f"snapshot of {server.id} not written: {exc}") from exc
        self._log(server.id, f"snapshot written ({target.stat().st_size} bytes)")
        return "raw"

    async def rollback_live_migration_at_destination(self, server_id: str) -> None:
        self.instances.pop(server_id, None)
        self.consoles.pop(server_id, None)
        self.disks.pop(server_id, None)
        self.interfaces.pop(server_id, None)


@hookimpl
def hvmesh_register_drivers(register: Any) -> None:
    register("fake", FakeDriver, description="simulated hosts in memory, for tests and scale")
