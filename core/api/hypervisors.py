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

from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.lookups import check_ref
from hvmesh.core.api.policy import need_admin
from hvmesh.core.api.requests import Empty, Ref
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import Request
from hvmesh.core.state import reports


class InventoryQuery(Request):
    sql: Annotated[str, Meta(min_length=1, max_length=100_000)]
    params: list[str | int | float | bool | None] = msgspec.field(default_factory=list)


class InventoryReport(Request):
    name: Literal["capacity", "consumers"]


class HypervisorEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    # --- hypervisors ----------------------------------------------------------------------

    async def hypervisor_list(self, caller: Caller, req: Empty) -> dict:
        need_admin(caller, "listing hypervisors")
        index = self.api.index
        out = []
        for name in sorted(index.hosts):
            host = index.hosts[name].value

            def inv(rc: str, h=host) -> int:
                i = h.inventories.get(rc)
                return i.total if i else 0

            out.append(
                {
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
            )
        return {"hypervisors": out}

    async def hypervisor_get(self, caller: Caller, req: Ref) -> dict:
        need_admin(caller, "reading hypervisors")
        check_ref(req, "hypervisor")
        name = req.id or req.name or ""
        listed = (await self.hypervisor_list(caller, Empty()))["hypervisors"]
        row = next((h for h in listed if h["name"] == name), None)
        entry = self.api.index.hosts.get(name)
        if row is None or entry is None:
            raise errors.NotFound(f"hypervisor {name} not found")
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

    # --- inventory ------------------------------------------------------------------------

    async def inventory_query(self, caller: Caller, req: InventoryQuery) -> dict:
        need_admin(caller, "querying the inventory")
        result = await reports.query(
            self.api.index, await self.api.st.servers.values(), req.sql, req.params
        )
        return {"query": result}

    async def inventory_report(self, caller: Caller, req: InventoryReport) -> dict:
        need_admin(caller, "reading inventory reports")
        description, sql = reports.REPORTS[req.name]
        result = await reports.query(self.api.index, await self.api.st.servers.values(), sql, [])
        return {
            "report": {"name": req.name, "description": description, **msgspec.to_builtins(result)}
        }
