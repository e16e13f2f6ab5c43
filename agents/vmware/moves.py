"""Resize and cold migration between providers (clusters or ESXi hosts) of one vCenter: the source VM powered off and kept, a clone made in the destination's cluster with the new flavor.

Source: migrate_disk_and_power_off powers the VM off and renames it "<server id>-orig"
(the clone takes the server id as its name in the same folder). Destination:
finish_migration finds that VM anywhere in the datacenter by its tag, clones it into its
own folder, pool, host and datastore with the tag, sets the new flavor's CPU and memory,
grows the disk, and starts it if asked. confirm_migration destroys the source's VM;
finish_revert_migration gives it its name back and starts it again (the conductor
destroys the clone). A provider is a cluster, or one ESXi host under host_per_provider, and
a move always goes to another provider.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from hvmesh.agents.driver import DriverError
from hvmesh.agents.vmware import inventory, vm_spec
from hvmesh.agents.vmware.console import VmwareConsole
from hvmesh.core import log
from hvmesh.core.protocol.records import Flavor, Image, Server

LOG = log.get_logger(__name__)

ORIG_SUFFIX = "-orig"


class VmwareMoves(VmwareConsole):
    async def anywhere(self, server_id: str) -> Any:
        """The server's VM wherever it runs in the datacenter (a move's source, from the
        destination); DriverError when there is none."""
        found = (await self.everywhere()).get(server_id)
        if not found:
            raise DriverError(
                f"instance {server_id} is on no host of datacenter {self.location.datacenter_name}"
            )
        return found[0].vm

    async def _rename(self, vm: Any, name: str, server_id: str) -> None:
        await self.vm_task(vm, "Rename_Task", f"renaming the VM of {server_id}", newName=name)

    async def migrate_disk_and_power_off(self, server: Server, dest: str, flavor: Flavor) -> None:
        vm = await self.require(server.id)
        if await self.power_state_of(vm) != "poweredOff":
            await self.vm_task(vm, "PowerOffVM_Task", f"powering off {server.id}")
        await self._rename(vm, vm_spec.vm_name(server.id) + ORIG_SUFFIX, server.id)
        LOG.info("vmware.migrate_source_ready", server=server.id, dest=dest)

    async def finish_migration(self, server: Server, image: Image | None, power_on: bool) -> None:
        if await self.lookup(server.id) is None:
            try:
                await self._clone_here(server)
            except BaseException:
                vm = await self.lookup(server.id)
                if vm is not None:
                    await self.destroy(server.id)
                raise
        vm = await self.require(server.id)
        if power_on and await self.power_state_of(vm) != "poweredOn":
            await self.vm_task(vm, "PowerOnVM_Task", f"powering on {server.id}")
        LOG.info("vmware.migrated", server=server.id, flavor=server.flavor.name)

    async def _clone_here(self, server: Server) -> None:
        loc = self.location
        source = await self.anywhere(server.id)
        facts = await self.facts()
        hosts = [h for h in facts.hosts if h.usable]
        if not hosts:
            raise DriverError(f"cluster of {self.host} has no usable host")
        datastore = inventory.pick_datastore(facts, server.flavor.disk_gb * inventory.GIB)
        host = max(hosts, key=lambda h: h.memory_bytes).moref
        spec = vim.vm.CloneSpec(
            location=vim.vm.RelocateSpec(pool=loc.pool, host=host, datastore=datastore.moref),
            config=vim.vm.ConfigSpec(
                numCPUs=server.flavor.vcpus,
                memoryMB=server.flavor.ram_mb,
                extraConfig=[vim.option.OptionValue(key=vm_spec.SERVER_ID_KEY, value=server.id)],
            ),
            powerOn=False,
        )
        clone = await self.session.run_task(
            lambda _si: source.CloneVM_Task(
                folder=loc.folder, name=vm_spec.vm_name(server.id), spec=spec
            ),
            f"cloning {server.id} into {self.host}",
        )
        self._vms[server.id] = clone
        await self.settle_on(clone, host, server.id)
        await self.vm_task(
            clone,
            "ReconfigVM_Task",
            f"resizing {server.id}",
            spec=vm_spec.resize_spec(server.flavor),
        )
        await self._grow(clone, server.flavor.disk_gb, server.id)
        await self.redo_drive(clone, server)
        await self.redo_console(clone, server)

    async def settle_on(self, vm: Any, host: Any, server_id: str) -> None:
        """Make sure the VM runs on `host`, one of this provider's: a vCenter may leave a
        clone registered on its source's host, which would make it the source's VM."""
        current = await self.session.call(lambda _si: vm.runtime.host)
        if current is None or current._moId != host._moId:
            spec = vim.vm.RelocateSpec(host=host, pool=self.location.pool)
            await self.vm_task(vm, "RelocateVM_Task", f"placing {server_id} on {self.host}", spec)

    async def _grow(self, vm: Any, disk_gb: int, server_id: str) -> None:
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        change = vm_spec.grow_disk(devices, disk_gb)
        if change is not None:
            spec = vim.vm.ConfigSpec(deviceChange=[change])
            await self.vm_task(vm, "ReconfigVM_Task", f"growing the disk of {server_id}", spec=spec)

    async def confirm_migration(self, server_id: str) -> None:
        await self.destroy(server_id)

    async def finish_revert_migration(self, server: Server, power_on: bool) -> None:
        vm = await self.require(server.id)
        await self._rename(vm, vm_spec.vm_name(server.id), server.id)
        if power_on and await self.power_state_of(vm) != "poweredOn":
            await self.vm_task(vm, "PowerOnVM_Task", f"powering on {server.id}")
        LOG.info("vmware.migration_reverted", server=server.id)
