"""The API's host aggregate endpoints, admin only: hvmesh.api.aggregates.{create,list,get,
delete,add_host,remove_host,set_metadata}.

An aggregate with metadata availability_zone makes its hosts that zone; a host is in one
zone at most. An aggregate's name is unique, also under concurrent creates.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hvmesh.core.api import paging
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.lookups import by_id_or_name, check_ref
from hvmesh.core.api.paging import Page
from hvmesh.core.api.requests import Ref
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import new_id
from hvmesh.core.protocol.records import Aggregate
from hvmesh.core.protocol.requests import AggregateCreate, AggregateHost, AggregateMetadata
from hvmesh.core.state import names


class AggregateEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    async def find_aggregate(self, ref: str) -> Aggregate:
        return await by_id_or_name(self.api.st.aggregates, ref, "aggregate", lambda a: True)

    async def agg_create(self, caller: Caller, req: AggregateCreate) -> dict:
        metadata = dict(req.metadata)
        if req.availability_zone:
            metadata["availability_zone"] = req.availability_zone
        aggregate = Aggregate(id=new_id(), name=req.name, metadata=metadata)
        st = self.api.st

        async def legacy() -> bool:
            return any(a.name == req.name for a in await st.aggregates.values())

        await names.create(st, st.aggregates, "aggregate", aggregate, legacy=legacy)
        return {"aggregate": aggregate}

    async def agg_list(self, caller: Caller, req: Page) -> dict:
        """Aggregates by name (then id), paged by aggregate id."""
        aggregates = self.api.lists.aggregates
        return await paging.from_index(
            self.api, "aggregates", aggregates, req, None, lambda a: a.id
        )

    async def agg_get(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "aggregate")
        return {"aggregate": await self.find_aggregate(req.id or req.name or "")}

    async def agg_delete(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "aggregate")
        aggregate = await self.find_aggregate(req.id or req.name or "")
        if aggregate.hosts:
            raise errors.Conflict(f"aggregate {aggregate.name} still has hosts: remove them first")
        await self.api.st.aggregates.delete(aggregate.id)
        await names.give_up(self.api.st, "aggregate", aggregate.name, aggregate.id)
        return {"deleted": aggregate.id}

    async def _change_aggregate(self, ref: str, change: Any) -> dict:
        """Apply `change(aggregate) -> aggregate` with compare-and-set; it raises to refuse."""
        aggregate = await self.find_aggregate(ref)
        written = await self.api.st.aggregates.mutate(aggregate.id, change)
        if written is None:
            raise errors.NotFound(f"aggregate {ref} not found")
        self.api.index.apply_aggregate(written.key, written.value)  # read-your-writes for zones
        return {"aggregate": written.value}

    async def agg_add_host(self, caller: Caller, req: AggregateHost) -> dict:
        if req.host not in self.api.index.hosts:
            raise errors.NotFound(f"host {req.host} not found")
        zone = (await self.find_aggregate(req.id)).availability_zone
        if zone:
            for other in await self.api.st.aggregates.values():
                if req.host in other.hosts and other.availability_zone not in (None, zone):
                    raise errors.Conflict(
                        f"host {req.host} is in aggregate {other.name}, availability zone "
                        f"{other.availability_zone}; a host has one zone"
                    )

        def add(a: Aggregate) -> Aggregate:
            if req.host in a.hosts:
                raise errors.Conflict(f"host {req.host} is already in aggregate {a.name}")
            return msgspec.structs.replace(a, hosts=[*a.hosts, req.host])

        return await self._change_aggregate(req.id, add)

    async def agg_remove_host(self, caller: Caller, req: AggregateHost) -> dict:

        def remove(a: Aggregate) -> Aggregate:
            if req.host not in a.hosts:
                raise errors.NotFound(f"host {req.host} is not in aggregate {a.name}")
            return msgspec.structs.replace(a, hosts=[h for h in a.hosts if h != req.host])

        return await self._change_aggregate(req.id, remove)

    async def agg_set_metadata(self, caller: Caller, req: AggregateMetadata) -> dict:

        def update(a: Aggregate) -> Aggregate:
            metadata = dict(a.metadata)
            for key, value in req.metadata.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            return msgspec.structs.replace(a, metadata=metadata)

        return await self._change_aggregate(req.id, update)
