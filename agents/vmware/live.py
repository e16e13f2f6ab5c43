"""Live migration (vMotion) between providers of one vCenter: RelocateVM_Task moves the running VM to the destination's ESXi host and resource pool.

The source knows only the destination's provider name, so the destination writes where it
places VMs on the VM itself: pre_live_migration sets the extraConfig key
hvmesh.live_target = "<provider>;<pool moref>;<ESXi host moref>;<datastore moref or
empty>" (a datastore only when the VM's own is not one the destination may use).
live_migration reads it, checks the provider is `dest`, and relocates; the
destination's post_live_migration_at_destination and
rollback_live_migration_at_destination clear the key.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from hvmesh.agents.driver import DriverError
from hvmesh.agents.vmware import inventory
from hvmesh.agents.vmware.moves import VmwareMoves
from hvmesh.core import log
from hvmesh.core.protocol.records import Server

LOG = log.get_logger(__name__)

TARGET_KEY = "hvmesh.live_target"


def target_of(extra: list[Any]) -> str | None:
    for opt in extra or []:
        if opt.key == TARGET_KEY and opt.value:
            return str(opt.value)
    return None


def relocate_spec(si: Any, target: str) -> Any:
    """(worker thread) The RelocateSpec a target value stands for."""
    _, pool, host, datastore = target.split(";")
    stub = si._stub
    return vim.vm.RelocateSpec(
        pool=vim.ResourcePool(pool, stub),
        host=vim.HostSystem(host, stub),
        datastore=vim.Datastore(datastore, stub) if datastore else None,
    )


class VmwareLive(VmwareMoves):
    async def _set_target(self, vm: Any, value: str, server_id: str) -> None:
        spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=TARGET_KEY, value=value)])
        await self.vm_task(vm, "ReconfigVM_Task", f"marking the move of {server_id}", spec=spec)

    # --- destination --------------------------------------------------------------------------

    async def check_can_live_migrate_destination(self, server: Server, source: str) -> None:
        vm = await self.anywhere(server.id)
        state = await self.power_state_of(vm)
        if state != "poweredOn":
            raise DriverError(f"instance {server.id} is {state}: vMotion moves a running VM")
        facts = await self.facts()
        if not any(h.usable for h in facts.hosts):
            raise DriverError(f"{self.host} has no usable ESXi host to take {server.id}")

    async def pre_live_migration(self, server: Server) -> None:
        vm = await self.anywhere(server.id)
        facts = await self.facts()
        hosts = [h for h in facts.hosts if h.usable]
        if not hosts:
            raise DriverError(f"{self.host} has no usable ESXi host to take {server.id}")
        host = max(hosts, key=lambda h: h.memory_bytes).moref
        current = await self.session.call(lambda _si: {d._moId for d in vm.datastore})
        allowed = {d.moref._moId for d in facts.datastores}
        datastore = ""
        if not current <= allowed:
            needed = server.flavor.disk_gb * inventory.GIB
            datastore = inventory.pick_datastore(facts, needed).moref._moId
        target = f"{self.host};{self.location.pool._moId};{host._moId};{datastore}"
        await self._set_target(vm, target, server.id)
        LOG.info("vmware.live_target_set", server=server.id, target=target)

    async def post_live_migration_at_destination(self, server: Server) -> None:
        vm = await self.require(server.id)
        await self._set_target(vm, "", server.id)
        LOG.info("vmware.live_migrated_here", server=server.id)

    async def rollback_live_migration_at_destination(self, server_id: str) -> None:
        try:
            vm = await self.anywhere(server_id)
            await self._set_target(vm, "", server_id)
        except (DriverError, vmodl.fault.ManagedObjectNotFound) as exc:
            LOG.info("vmware.live_rollback_nothing", server=server_id, error=str(exc))

    # --- source -------------------------------------------------------------------------------

    async def _target(self, vm: Any, server_id: str, dest: str) -> str:
        extra = await self.session.call(lambda _si: list(vm.config.extraConfig))
        target = target_of(extra)
        if target is None or target.split(";")[0] != dest:
            raise DriverError(f"{dest} has not prepared to receive {server_id} live")
        return target

    async def check_can_live_migrate_source(self, server: Server, dest: str) -> None:
        vm = await self.lookup(server.id)
        if vm is None:
            vm = await self.anywhere(server.id)  # moved already (a repeated step)?
        await self._target(vm, server.id, dest)

    async def live_migration(self, server: Server, dest: str) -> None:
        vm = await self.lookup(server.id)
        if vm is None:  # a repeated step after the move: already there
            await self._target(await self.anywhere(server.id), server.id, dest)
            return
        target = await self._target(vm, server.id, dest)
        spec = await self.session.call(lambda si: relocate_spec(si, target))
        await self.session.run_task(
            lambda _si: vm.RelocateVM_Task(spec=spec), f"moving {server.id} to {dest} live"
        )
        self._vms.pop(server.id, None)
        LOG.info("vmware.live_migrated", server=server.id, dest=dest)
