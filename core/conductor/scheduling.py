"""Choosing a host: asking the scheduler, and keeping server groups' placements."""

from __future__ import annotations

import msgspec

from hvmesh.core.bus import micro as bus
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import RequestSpec, Selection
from hvmesh.core.protocol.records import GroupSpec, Server, ServerGroup
from hvmesh.core.state import leases, placement
from hvmesh.core.state.store import Store


async def select(
    ctx: ConductorContext, srv: Server, spec: RequestSpec, move: bool = False
) -> tuple[Selection, str | None]:
    """Ask the scheduler for a host claimed for `spec`, then place the server there in its group.

    The group is read afresh into `spec.group` first; a move's claim key (one per
    migration) is filled in when not given, and the request's expiry set. Returns the
    scheduler's selection and, when the group's policy forbids its host, why (the claim
    is then given back). With `move`, the claim is a move's, which the host does not
    count as a build in progress. Raises ServiceUnavailable when no scheduler answers, and the error the
    scheduler answered with when it failed the request (PluginFailed: a plugin raised).
    """
    spec.group = await group_spec(ctx.st, srv)
    if move and not spec.claim_key and srv.migration is not None:
        spec.claim_key = leases.move_key(srv.id, srv.migration.id)
    # Past this the answer is not waited for: the scheduler claims nothing for it then.
    spec.expires_at = now() + ctx.cfg.nats.request_timeout
    reply = await bus.call(
        ctx.nc, subjects.SCHED_SELECT, spec, timeout=ctx.cfg.nats.request_timeout
    )
    selection = msgspec.convert(reply, Selection)
    if selection.host is None:
        return selection, None
    if move:
        # The scheduler counts its claims as builds in progress; a move's is not one.
        await placement.not_in_progress(ctx.st, selection.host, srv.id)
    violation = await group_place(ctx.st, srv.id, spec.group, selection.host)
    if violation is not None:
        await placement.release(ctx.st, selection.host, srv.id)
    return selection, violation


async def group_spec(st: Store, srv: Server) -> GroupSpec | None:
    """The server's group as the scheduler needs it: policy and the others' hosts."""
    group_id = srv.scheduler_hints.group
    entry = await st.server_groups.get(group_id) if group_id else None
    if entry is None:
        return None
    g = entry.value
    return GroupSpec(
        id=g.id,
        policy=g.policy,
        member_hosts=[h for m, h in g.placements.items() if m != srv.id],
        max_server_per_host=g.max_server_per_host,
    )


async def group_place(st: Store, server_id: str, group: GroupSpec | None, host: str) -> str | None:
    """Record the server's host in its group, if the group's hard policy allows it.

    Two members scheduled at once can pick conflicting hosts. Their placements are
    compare-and-set writes of the one group record, so the later writer sees the
    earlier placement and backs off (None: placed; else why not).
    """
    if group is None:
        return None
    verdict: list[str] = []

    def place(g: ServerGroup) -> ServerGroup | None:
        verdict.clear()
        others = [h for m, h in g.placements.items() if m != server_id]
        if g.policy == "affinity" and any(h != host for h in others):
            verdict.append(f"affinity group {g.id} is on {others[0]}")
            return None
        if g.policy == "anti-affinity" and others.count(host) >= g.max_server_per_host:
            verdict.append(f"anti-affinity group {g.id} is full on {host}")
            return None
        return msgspec.structs.replace(g, placements={**g.placements, server_id: host})

    await st.server_groups.mutate(group.id, place)
    return verdict[0] if verdict else None


async def group_unplace(st: Store, srv: Server, leave: bool = False) -> None:
    """Forget where the server was placed in its group (and with `leave`, the membership)."""
    group_id = srv.scheduler_hints.group
    if not group_id:
        return

    def drop(g: ServerGroup) -> ServerGroup | None:
        if srv.id not in g.placements and not (leave and srv.id in g.members):
            return None
        placements = {m: h for m, h in g.placements.items() if m != srv.id}
        members = [m for m in g.members if m != srv.id] if leave else g.members
        return msgspec.structs.replace(g, placements=placements, members=members)

    await st.server_groups.mutate(group_id, drop)
