"""The VMware driver's foundation: its link to vCenter, the ESXi hosts it answers for, where it places VMs, and finding a server's VM by its extraConfig tag.

The driver's actions (driver.py) are written on top of it. A driver answers for the
usable ESXi hosts of its cluster, or for one of them when [vmware] host_per_provider
reports each host as its own provider (then `esx_host` names it, and the drivers of one
agent share one Link).
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vmodl

from hvmesh.agents.driver import ComputeDriver, DriverError
from hvmesh.agents.vmware import inventory
from hvmesh.agents.vmware.events import POWER_STATES
from hvmesh.agents.vmware.images import DatastoreFiles
from hvmesh.agents.vmware.link import Link
from hvmesh.agents.vmware.session import Session, fault_message, ssl_context
from hvmesh.agents.vmware.vm_spec import portgroup_mappings
from hvmesh.agents.vmware.vms import FoundVm, in_scope, server_id_of, tagged_vms
from hvmesh.core import log
from hvmesh.core.config import Config

LOG = log.get_logger(__name__)


class VmwareBase(ComputeDriver):
    def __init__(
        self, host: str, config: Config, esx_host: str = "", link: Link | None = None
    ) -> None:
        super().__init__(host, config)
        self.cfg = config.vmware
        #: The ESXi host this driver is the provider of ("": the whole cluster).
        self.esx_host = esx_host
        probe = min(config.compute.heartbeat_interval, 10.0)
        self.link = link or Link(self.cfg, host, probe)
        self._location: inventory.Location | None = None
        self._files: DatastoreFiles | None = None
        self._vms: dict[str, Any] = {}  # server id -> VM, as last found
        #: Moref ids of the ESXi hosts this driver answers for, as last read.
        self.scope: set[str] = set()

    @property
    def session(self) -> Session:
        return self.link.session

    # --- connection -------------------------------------------------------------------------

    async def init_host(self) -> None:
        portgroup_mappings(self.config.compute.physical_network_mappings)  # fails early
        self._files = DatastoreFiles(self.cfg, ssl_context(self.cfg))
        await self.link.acquire()
        try:
            self._location = await self.session.call(
                lambda si: inventory.locate(si, self.cfg), "finding the cluster"
            )
            await self.facts()
        except BaseException:
            await self.link.release()
            raise
        self.link.subscribe(self.host, self.scope, self.emit_power, self.inventory_changed)
        loc = self._location
        LOG.info(
            "vmware.init_host",
            host=self.host,
            vcenter=self.cfg.host,
            datacenter=loc.datacenter_name,
            cluster=self.cfg.cluster or "(first)",
            esx_host=self.esx_host or "(all)",
        )

    async def cleanup_host(self) -> None:
        self.link.unsubscribe(self.host)
        await self.link.release()

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

    # --- the hosts answered for --------------------------------------------------------------

    async def facts(self) -> inventory.ClusterFacts:
        """The cluster's datastores and the hosts this driver answers for (its ESXi host
        only, under host_per_provider), read in one call; the scope follows them."""
        cluster = self.location.cluster
        facts: inventory.ClusterFacts = await self.read(
            lambda si: inventory.cluster_facts(si, cluster, self.cfg.datastore_regex),
            f"reading cluster {self.cfg.cluster or '(first)'}",
        )
        if self.esx_host:
            facts.hosts = [h for h in facts.hosts if h.name == self.esx_host]
            if not facts.hosts:
                raise DriverError(
                    f"ESXi host {self.esx_host} is no longer in cluster {self.cfg.cluster}"
                )
        self.scope.clear()
        self.scope.update(str(h.moref._moId) for h in facts.hosts)
        return facts

    # --- finding VMs ------------------------------------------------------------------------

    async def everywhere(self) -> dict[str, list[FoundVm]]:
        """Every tagged VM of the datacenter, with the host each runs on."""
        folder = self.location.vm_root
        found: dict[str, list[FoundVm]] = await self.session.call(
            lambda si: tagged_vms(si, folder), "listing VMs"
        )
        return found

    async def tagged(self) -> dict[str, Any]:
        """{server id: VM} of the tagged VMs on the hosts this driver answers for."""
        self._vms = in_scope(await self.everywhere(), self.scope)
        return self._vms

    async def lookup(self, server_id: str) -> Any | None:
        """The server's VM on this driver's hosts, or None."""
        vm = self._vms.get(server_id)
        if vm is not None:
            try:
                host = await self.session.call(lambda _si: vm.runtime.host)
                if host is not None and str(host._moId) in self.scope:
                    return vm
            except vmodl.fault.ManagedObjectNotFound:
                pass
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


__all__ = ["POWER_STATES", "VmwareBase", "server_id_of"]
