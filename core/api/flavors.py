"""The API's flavor endpoints: hvmesh.api.flavors.{create,list,get,delete,set_extra_specs}.

Flavors are made and deleted by the admin; a private flavor (is_public false) is seen by
the admin project only. A flavor's name is unique, also under concurrent creates
(core/state/names.py).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from hvmesh.core import log
from hvmesh.core.api import paging
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.list_indexes import PUBLIC
from hvmesh.core.api.lookups import check_ref, find_flavor
from hvmesh.core.api.paging import Page
from hvmesh.core.api.requests import Ref
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import new_id
from hvmesh.core.protocol.records import Flavor
from hvmesh.core.protocol.requests import FlavorCreate, FlavorExtraSpecs
from hvmesh.core.protocol.resources import custom_resources, standard_overrides
from hvmesh.core.state import names

LOG = log.get_logger(__name__)


class FlavorList(Page):
    """hvmesh.api.flavors.list: Nova's flavor filters (the admin alone sees private ones)."""

    is_public: bool | None = None  # admin: only public (true) or only private (false)
    min_ram: Annotated[int, Meta(ge=0)] | None = None  # MB: flavors with at least this
    min_disk: Annotated[int, Meta(ge=0)] | None = None  # GB: flavors with at least this


class FlavorEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    async def flavor_create(self, caller: Caller, req: FlavorCreate) -> dict:
        check_extra_specs(req.extra_specs)
        flavor = Flavor(
            id=req.id or new_id(),
            name=req.name,
            vcpus=req.vcpus,
            ram_mb=req.ram_mb,
            disk_gb=req.disk_gb,
            extra_specs=req.extra_specs,
            is_public=req.is_public,
        )
        st = self.api.st

        async def legacy() -> bool:
            return any(f.name == req.name for f in await st.flavors.values())

        await names.create(st, st.flavors, "flavor", flavor, legacy=legacy)
        return {"flavor": flavor}

    async def flavor_list(self, caller: Caller, req: FlavorList) -> dict:
        """Flavors by RAM then name (then id), paged by flavor id."""

        def keep(f: Flavor) -> bool:
            return (
                (req.is_public is None or f.is_public == req.is_public)
                and (req.min_ram is None or f.ram_mb >= req.min_ram)
                and (req.min_disk is None or f.disk_gb >= req.min_disk)
            )

        scopes = None if caller.is_admin else (PUBLIC,)
        flavors = self.api.lists.flavors
        return await paging.from_index(
            self.api, "flavors", flavors, req, scopes, lambda f: f.id, keep=keep
        )

    async def flavor_get(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "flavor")
        return {"flavor": await find_flavor(self.api.st, req.id or req.name or "", caller)}

    async def flavor_set_extra_specs(self, caller: Caller, req: FlavorExtraSpecs) -> dict:
        """Set or remove extra specs, in one compare-and-set; checked as at create."""
        if not req.extra_specs:
            raise errors.BadRequest("extra_specs: give at least one to set or remove")
        flavor = await find_flavor(self.api.st, req.id, caller)

        def change(f: Flavor) -> Flavor:
            specs = dict(f.extra_specs)
            for key, value in req.extra_specs.items():
                if value is None:
                    specs.pop(key, None)
                else:
                    specs[key] = value
            check_extra_specs(specs)
            return msgspec.structs.replace(f, extra_specs=specs)

        entry = await self.api.st.flavors.mutate(flavor.id, change)
        if entry is None:
            raise errors.NotFound(f"flavor {req.id} not found")
        LOG.info("api.flavor_extra_specs_set", flavor=flavor.id, keys=sorted(req.extra_specs))
        return {"flavor": entry.value}

    async def flavor_delete(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "flavor")
        flavor = await find_flavor(self.api.st, req.id or req.name or "", caller)
        await self.api.st.flavors.delete(flavor.id)
        await names.give_up(self.api.st, "flavor", flavor.name, flavor.id)
        return {"deleted": flavor.id}


def check_extra_specs(extra_specs: dict[str, str]) -> None:
    """400 for extra specs whose resource amounts are not what a flavor can ask for."""
    try:
        custom = custom_resources(extra_specs)
        standard_overrides(extra_specs)
    except ValueError as exc:
        raise errors.BadRequest(f"extra_specs: {exc}") from None
    if any(n < 1 for n in custom.values()):
        raise errors.BadRequest("extra_specs: resources:CUSTOM_* amounts must be 1 or more")
