"""The API's server group endpoints: hvmesh.api.server_groups.{create,list,get,delete}.

A group's policy (affinity, anti-affinity, ...) binds the servers created with
scheduler_hints.group naming it; join_group adds them before they are scheduled.
"""

from __future__ import annotations

import msgspec

from hvmesh.core.api import paging, quota_checks
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.lookups import owned
from hvmesh.core.api.paging import Page
from hvmesh.core.api.requests import IdOnly
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import new_id
from hvmesh.core.protocol.records import ServerGroup
from hvmesh.core.protocol.requests import ServerGroupCreate


class ServerGroupEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    async def own_group(self, group_id: str, caller: Caller) -> ServerGroup:
        return await owned(self.api.st.server_groups, group_id, "server group", caller)

    async def group_create(self, caller: Caller, req: ServerGroupCreate) -> dict:
        if req.max_server_per_host != 1 and req.policy != "anti-affinity":
            raise errors.BadRequest(
                "max_server_per_host is a rule of the anti-affinity policy only"
            )
        group = ServerGroup(
            id=new_id(),
            name=req.name,
            project=caller.project,
            user=caller.user,
            policy=req.policy,
            max_server_per_host=req.max_server_per_host,
        )
        await quota_checks.reserve_holder(self.api, caller, "group", group.id)
        try:
            await self.api.st.server_groups.create(group.id, group)
        except BaseException:
            await quota_checks.release_holder(self.api, caller.project, "group", group.id)
            raise
        return {"server_group": group}

    async def group_list(self, caller: Caller, req: Page) -> dict:
        """Server groups oldest first, paged by group id."""
        scopes = None if caller.is_admin else (caller.project,)
        groups = self.api.lists.server_groups
        return await paging.from_index(
            self.api, "server_groups", groups, req, scopes, lambda g: g.id
        )

    async def group_get(self, caller: Caller, req: IdOnly) -> dict:
        return {"server_group": await self.own_group(req.id, caller)}

    async def group_delete(self, caller: Caller, req: IdOnly) -> dict:
        group = await self.own_group(req.id, caller)
        await self.api.st.server_groups.delete(group.id)
        await quota_checks.release_holder(self.api, group.project, "group", group.id)
        return {"deleted": group.id}

    async def join_group(self, group_id: str, server_ids: list[str], caller: Caller) -> str:
        """Add new servers to their group (id or name) before they are scheduled, so members
        see each other; the group's id."""
        group = await self.own_group(group_id, caller)
        limits = await quota_checks.limits_of(self.api, group.project)

        def add(g: ServerGroup) -> ServerGroup:
            new = [i for i in server_ids if i not in g.members]
            quota_checks.check_members(limits, len(g.members), len(new))
            return msgspec.structs.replace(g, members=[*g.members, *new])

        if await self.api.st.server_groups.mutate(group.id, add) is None:
            raise errors.NotFound(f"server group {group_id} not found")
        return group.id
