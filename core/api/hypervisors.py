"""The API's hypervisor and inventory endpoints, admin only: hvmesh.api.hypervisors.{list,get}
and hvmesh.api.inventory.{query,report}.

Hypervisors are the hosts of the inventory index with their capacity and usage, as
`openstack hypervisor list` and `hypervisor show` show them; inventory.query runs SQL over
the index (core/state/reports.py) and inventory.report runs one of its named reports.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from hvmesh.core import log
from hvmesh.core.api import paging
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.lookups import check_ref
from hvmesh.core.api.paging import Page
from hvmesh.core.api.requests import Ref
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import Request
from hvmesh.core.protocol.records import Host
from hvmesh.core.protocol.requests import ServiceSet
from hvmesh.core.state import reports

LOG = log.get_logger(__name__)


class InventoryQuery(Request):
    sql: Annotated[str, Meta(min_length=1, max_length=100_000)]
    params: list[str | int | float | bool | None] = msgspec.field(default_factory=list)


class InventoryReport(Request):
    name: Literal["capacity", "consumers"]


class HypervisorList(Page):
    """hvmesh.api.hypervisors.list: paged by host name, as Nova's; optionally by name."""

    # Nova's hypervisor_hostname_pattern: hosts whose name contains this.
    hypervisor_hostname_pattern: Annotated[str, Meta(min_length=1, max_length=255)] | None = None


class HypervisorEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    # --- hypervisors ----------------------------------------------------------------------

    async def hypervisor_list(self, caller: Caller, req: HypervisorList) -> dict:
        """Hypervisors by name, paged by name."""
        pattern = req.hypervisor_hostname_pattern
        names = [n for n in sorted(self.api.index.hosts) if pattern is None or pattern in n]
        return paging.page(self.api, "hypervisors", names, req, lambda n: n, self._row)

    def _row(self, name: str) -> dict:
        """A host of the index as `hypervisor list` shows it."""
        index = self.api.index
        host = index.hosts[name].value

        def inv(rc: str) -> int:
            i = host.inventories.get(rc)
            return i.total if i else 0

        return {
            "name": name,
            "state": "up" if index.is_up(name) else "down",
            "status": host.status,
            "availability_zone": index.zone_of(name),
            "hypervisor_type": host.hypervisor_type,
            "vcpus": inv("VCPU"),
            "vcpus_used": host.used("VCPU"),
            "memory_mb": inv("MEMORY_MB"),
            "memory_mb_used": host.used("MEMORY_MB"),
            "local_gb": inv("DISK_GB"),
            "local_gb_used": host.used("DISK_GB"),
            "running_vms": len(host.allocations),
        }

    async def hypervisor_get(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "hypervisor")
        name = req.id or req.name or ""
        entry = self.api.index.hosts.get(name)
        if entry is None:
            raise errors.NotFound(f"hypervisor {name} not found")
        row = self._row(name)
        host = entry.value
        servers = [s.id for s in await self.api.st.servers.values() if s.host == name]
        return {
            "hypervisor": {
                **row,
                "hypervisor_version": host.hypervisor_version,
                "cpu_arch": host.cpu_arch,
                "disabled_reason": host.disabled_reason,
                "traits": sorted(host.traits),
                "aggregates": sorted(
                    a.name for a in self.api.index.aggregates.values() if name in a.hosts
                ),
                "heartbeat": self.api.index.heartbeats.get(name),
                "servers": sorted(servers),
            }
        }

    async def service_set(self, caller: Caller, req: ServiceSet) -> dict:
        """Enable or disable a host for new servers, in one compare-and-set of its record."""
        if req.status == "enabled" and req.disabled_reason is not None:
            raise errors.BadRequest("disabled_reason: only with status disabled")

        def change(h: Host) -> Host:
            reason = req.disabled_reason if req.status == "disabled" else None
            return msgspec.structs.replace(h, status=req.status, disabled_reason=reason)

        entry = await self.api.st.hosts.mutate(req.host, change)
        if entry is None:
            raise errors.NotFound(f"compute service {req.host} not found")
        LOG.info("api.service_set", host=req.host, status=req.status, reason=req.disabled_reason)
        host = entry.value
        return {
            "service": {
                "id": host.name,
                "binary": "hvmesh-compute",
                "host": host.name,
                "status": host.status,
                "disabled_reason": host.disabled_reason,
            }
        }

    # --- inventory ------------------------------------------------------------------------

    async def inventory_query(self, caller: Caller, req: InventoryQuery) -> dict:
        result = await reports.query(
            self.api.index, await self.api.st.servers.values(), req.sql, req.params
        )
        return {"query": result}

    async def inventory_report(self, caller: Caller, req: InventoryReport) -> dict:
        description, sql = reports.REPORTS[req.name]
        result = await reports.query(self.api.index, await self.api.st.servers.values(), sql, [])
        return {
            "report": {"name": req.name, "description": description, **msgspec.to_builtins(result)}
        }
