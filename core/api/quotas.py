"""The API's quota endpoints: hvmesh.api.quotas.{show,set,defaults} and hvmesh.api.limits.show.

As Nova's os-quota-sets and os-limits: a member reads its own project's quotas and
limits, an admin any project's, and only an admin sets them. Limits are the [quota]
defaults of the configuration with the project's overrides (the "quotas" bucket); -1
is unlimited. Usage is what core/state/quotas.py counts.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, field

from hvmesh.core import log
from hvmesh.core.api import quota_checks
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.requests import Empty
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import Name, Request, now
from hvmesh.core.protocol.quota_records import QuotaLimits, project_key
from hvmesh.core.state import quotas
from hvmesh.core.state.store import CasConflict

LOG = log.get_logger(__name__)

Limit = Annotated[int, Meta(ge=-1, le=2**53)]
ResourceClass = Annotated[str, Meta(pattern=r"^CUSTOM_[A-Z0-9_]+\Z", max_length=255)]

# os-limits' absolute names: (limit name, usage name or None) of each quota.
ABSOLUTE = {
    "instances": ("maxTotalInstances", "totalInstancesUsed"),
    "cores": ("maxTotalCores", "totalCoresUsed"),
    "ram": ("maxTotalRAMSize", "totalRAMUsed"),
    "server_groups": ("maxServerGroups", "totalServerGroupsUsed"),
    "server_group_members": ("maxServerGroupMembers", None),
    "key_pairs": ("maxTotalKeypairs", None),
    "metadata_items": ("maxServerMeta", None),
}


class ProjectRef(Request):
    """A project (NATS account) by name; none: the caller's own."""

    project: Name | None = None


class ProjectName(Request):
    """A project (NATS account) by name."""

    project: Name


class QuotaSet(Request):
    """New limits of one project; a field not given keeps its limit."""

    project: Name
    instances: Limit | None = None
    cores: Limit | None = None
    ram: Limit | None = None
    server_groups: Limit | None = None
    server_group_members: Limit | None = None
    key_pairs: Limit | None = None
    metadata_items: Limit | None = None
    resources: dict[ResourceClass, Limit] = field(default_factory=dict)


def project_of(caller: Caller, project: str | None) -> str:
    """The project a request is about: the caller's own, or the one it names (policy
    allows naming another project to admins: the ...:other_project rules)."""
    return caller.project if project is None else project


def quota_set(project: str, limits: dict[str, int]) -> dict[str, Any]:
    return {"id": project, **quotas.ordered(limits)}


class QuotaEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    async def show(self, caller: Caller, req: ProjectRef) -> dict:
        project = project_of(caller, req.project)
        return {"quota_set": quota_set(project, await quota_checks.limits_of(self.api, project))}

    async def defaults(self, caller: Caller, req: Empty) -> dict:
        return {"quota_set": quota_set("defaults", self.api.cfg.quota.defaults())}

    async def set(self, caller: Caller, req: QuotaSet) -> dict:
        given = {
            name: value for name in quotas.RESOURCES if (value := getattr(req, name)) is not None
        }
        given.update(req.resources)
        if not given:
            raise errors.BadRequest("quotas.set: give at least one limit to set")
        key = project_key(req.project)

        def apply(q: QuotaLimits) -> QuotaLimits:
            return msgspec.structs.replace(q, limits={**q.limits, **given}, updated_at=now())

        for _ in range(3):
            if await self.api.st.quotas.mutate(key, apply) is not None:
                break
            try:
                await self.api.st.quotas.create(key, QuotaLimits(project=req.project, limits=given))
                break
            except CasConflict:  # made meanwhile: apply to it
                continue
        LOG.info("api.quotas_set", project=req.project, limits=given)
        limits = await quota_checks.limits_of(self.api, req.project)
        return {"quota_set": quota_set(req.project, limits)}

    async def delete(self, caller: Caller, req: ProjectName) -> dict:
        """Drop a project's overrides: its limits are the [quota] defaults again (and
        follow later changes of them). Nothing to drop is not an error."""
        await self.api.st.quotas.delete(project_key(req.project))
        LOG.info("api.quotas_deleted", project=req.project)
        limits = await quota_checks.limits_of(self.api, req.project)
        return {"quota_set": quota_set(req.project, limits)}

    async def limits(self, caller: Caller, req: ProjectRef) -> dict:
        """Nova's os-limits: the absolute limits and what the project uses of them; resource
        classes under "resources" (limit and in use)."""
        project = project_of(caller, req.project)
        limits = await quota_checks.limits_of(self.api, project)
        held = await quotas.usage(self.api.st, project)
        used = quotas.totals(held.holdings, caller.user if project == caller.project else None)
        absolute: dict[str, int] = {}
        for name, (max_name, used_name) in ABSOLUTE.items():
            absolute[max_name] = limits.get(name, -1)
            if used_name is not None:
                absolute[used_name] = used.get(name, 0)
        classes = sorted({*limits, *used} - set(quotas.RESOURCES))
        resources = {rc: {"limit": limits.get(rc, -1), "in_use": used.get(rc, 0)} for rc in classes}
        return {"limits": {"absolute": absolute, "rate": [], "resources": resources}}
