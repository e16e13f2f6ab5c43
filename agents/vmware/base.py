"""The VMware driver's foundation: its sessions, where it places VMs, and finding a server's VM by its extraConfig tag.

The driver's actions (driver.py) are written on top of it.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vmodl

from hvmesh.agents.driver import ComputeDriver, DriverError
from hvmesh.agents.vmware import inventory
from hvmesh.agents.vmware.events import POWER_STATES, PowerWatcher, pool_vms, server_id_of
from hvmesh.agents.vmware.images import DatastoreFiles
from hvmesh.agents.vmware.session import Session, fault_message, ssl_context
from hvmesh.agents.vmware.vm_spec import portgroup_mappings
from hvmesh.core import log
from hvmesh.core.config import Config

LOG = log.get_logger(__name__)


def tagged_vms(si: Any, pool: Any) -> dict[str, Any]:
    """(worker thread) {server id: VM} of the VMs under `pool` that carry the tag, read
    with one RetrievePropertiesEx (and its continuation pages)."""
    PC = vmodl.query.PropertyCollector
    spec = pool_vms(pool, ["config.extraConfig"])
    collector = si.content.propertyCollector
    found: dict[str, Any] = {}
    result = collector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
    while result is not None:
        for obj in result.objects:
            for prop in obj.propSet:
                sid = server_id_of(prop.val)
                if sid is not None:
                    found[sid] = obj.obj
        token = result.token
        result = collector.ContinueRetrievePropertiesEx(token) if token else None
    return found


class VmwareBase(ComputeDriver):
    def __init__(self, host: str, config: Config) -> None:
        super().__init__(host, config)
        self.cfg = config.vmware
        probe = min(config.compute.heartbeat_interval, 10.0)
        self.session = Session(self.cfg, host, probe_interval=probe)
        self._events = PowerWatcher(
            Session(self.cfg, f"{host}-events", probe_interval=probe),
            lambda si: inventory.locate(si, self.cfg).root_pool,
            self.emit_power,
        )
        self._location: inventory.Location | None = None
        self._files: DatastoreFiles | None = None
        self._vms: dict[str, Any] = {}  # server id -> VM, as last found

    # --- connection -------------------------------------------------------------------------

    async def init_host(self) -> None:
        portgroup_mappings(self.config.compute.physical_network_mappings)  # fails early
        self._files = DatastoreFiles(self.cfg, ssl_context(self.cfg))
        await self.session.open()
        self._location = await self.session.call(
            lambda si: inventory.locate(si, self.cfg), "finding the cluster"
        )
        await self._events.start()
        loc = self._location
        LOG.info(
            "vmware.init_host",
            host=self.host,
            vcenter=self.cfg.host,
            datacenter=loc.datacenter_name,
            cluster=self.cfg.cluster or "(first)",
        )

    async def cleanup_host(self) -> None:
        await self._events.stop()
        await self.session.close()

    def healthy(self) -> bool:
        return self.session.healthy

    @property
    def location(self) -> inventory.Location:
        if self._location is None:
            raise DriverError("the VMware driver is not connected (init_host did not run)")
        return self._location

    @property
    def files(self) -> DatastoreFiles:
        if self._files is None:
            raise DriverError("the VMware driver is not connected (init_host did not run)")
        return self._files

    async def cookie(self) -> str:
        """The session's cookie ("name=value"), for the datastore HTTP file API."""
        raw = await self.session.call(lambda si: si._stub.cookie, "reading the session")
        return str(raw).split(";", 1)[0].strip()

    # --- finding VMs ------------------------------------------------------------------------

    async def tagged(self) -> dict[str, Any]:
        pool = self.location.root_pool
        self._vms = await self.session.call(lambda si: tagged_vms(si, pool), "listing VMs")
        return self._vms

    async def lookup(self, server_id: str) -> Any | None:
        """The server's VM in this cluster, or None."""
        vm = self._vms.get(server_id)
        if vm is not None:
            try:
                await self.session.call(lambda _si: vm.runtime.powerState)
                return vm
            except vmodl.fault.ManagedObjectNotFound:
                self._vms.pop(server_id, None)
        return (await self.tagged()).get(server_id)

    async def require(self, server_id: str) -> Any:
        vm = await self.lookup(server_id)
        if vm is None:
            raise DriverError(f"instance {server_id} not found on {self.host}")
        return vm

    async def power_state_of(self, vm: Any) -> str:
        return str(await self.session.call(lambda _si: vm.runtime.powerState))

    async def vm_task(self, vm: Any, method: str, what: str, *args: Any, **kw: Any) -> Any:
        """Run the VM's task `method` and wait for it."""
        return await self.session.run_task(lambda _si: getattr(vm, method)(*args, **kw), what)

    async def read(self, fn: Any, what: str) -> Any:
        """A read that may meet a vSphere fault: DriverError naming `what`."""
        try:
            return await self.session.call(fn, what)
        except vmodl.MethodFault as exc:
            raise DriverError(f"{what}: {fault_message(exc)}") from None


__all__ = ["POWER_STATES", "VmwareBase", "server_id_of", "tagged_vms"]
