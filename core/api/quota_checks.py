"""The quota checks other endpoints make: servers on create, resize and unshelve, groups, key pairs.

Each takes its reservation before the endpoint writes anything, so a refusal (a 403
naming the quota, its limit and the usage) changes nothing; an endpoint that fails after
reserving gives the reservation back. How usage is counted is core/state/quotas.py.
"""

from __future__ import annotations

from hvmesh.core.api.context import ApiContext
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Flavor, Server
from hvmesh.core.state import quotas


async def limits_of(api: ApiContext, project: str) -> dict[str, int]:
    return await quotas.limits(api.st, api.cfg.quota.defaults(), project)


async def admit_servers(
    api: ApiContext,
    caller: Caller,
    flavor: Flavor,
    ids: list[str],
    min_count: int,
    metadata: dict[str, str],
) -> list[str]:
    """Reserve new servers: all of `ids`, else as many as fit and at least min_count (as
    Nova's multi-create); the ids admitted. 403 when metadata has too many items or not
    even min_count servers fit."""
    limits = await limits_of(api, caller.project)
    check_metadata_items(limits, metadata)
    amounts = quotas.flavor_amounts(flavor)
    holders = [(quotas.server_key(i), amounts, "") for i in ids]
    admitted = await quotas.reserve(api.st, caller.project, limits, holders, min_count)
    return ids[:admitted]


def check_metadata_items(limits: dict[str, int], metadata: dict[str, str]) -> None:
    """403 when a server's metadata has more items than the project's metadata_items."""
    most = limits.get("metadata_items", -1)
    if 0 <= most < len(metadata):
        raise errors.Forbidden(
            f"Quota exceeded for metadata_items: Requested {len(metadata)}, but the limit "
            f"is {most} metadata_items per server"
        )


async def metadata_fits(api: ApiContext, project: str, metadata: dict[str, str]) -> None:
    """`check_metadata_items` with the project's limits."""
    check_metadata_items(await limits_of(api, project), metadata)


async def release_servers(api: ApiContext, project: str, ids: list[str]) -> None:
    """Give back the reservations of servers whose records were not written."""
    unwritten = [i for i in ids if await api.st.servers.get(i) is None]
    if unwritten:
        await quotas.release(api.st, project, [quotas.server_key(i) for i in unwritten])


async def reserve_server(api: ApiContext, server: Server) -> None:
    """Count the server as `server` (the record an action is about to write: a resize,
    an unshelve) against its own project's quotas; only what grows is checked."""
    limits = await limits_of(api, server.project)
    holder = (quotas.server_key(server.id), quotas.server_amounts(server), "")
    await quotas.reserve(api.st, server.project, limits, [holder])


async def settle_server(api: ApiContext, server: Server) -> None:
    """Count the server as its record stands again (an action refused after reserving);
    not at all once its record is gone."""
    entry = await api.st.servers.get(server.id)
    if entry is not None:
        await quotas.settle(api.st, entry.value)
    else:
        await quotas.release(api.st, server.project, [quotas.server_key(server.id)])


async def reserve_holder(api: ApiContext, caller: Caller, kind: str, holder_id: str) -> None:
    """Count one server group or key pair (`kind`: "group" or "keypair") of the caller."""
    resource = {"group": "server_groups", "keypair": "key_pairs"}[kind]
    limits = await limits_of(api, caller.project)
    holder = (f"{kind}.{holder_id}", {resource: 1}, caller.user)
    await quotas.reserve(api.st, caller.project, limits, [holder])


async def release_holder(api: ApiContext, project: str, kind: str, holder_id: str) -> None:
    await quotas.release(api.st, project, [f"{kind}.{holder_id}"])


def check_members(limits: dict[str, int], members: int, adding: int) -> None:
    """403 when a server group of `members` servers cannot take `adding` more."""
    limit = limits.get("server_group_members", -1)
    if limit >= 0 and members + adding > limit:
        raise quotas.exceeded("server_group_members", adding, members, limit)
