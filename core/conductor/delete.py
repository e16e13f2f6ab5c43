"""Deletes: the destroy sent to every host that may hold the server, and its outcome.

A successful destroy gives back every claim the server holds and removes its record;
a failed one leaves the server in ERROR with a fault, to be deleted again.
"""

from __future__ import annotations

import msgspec

from hvmesh.core import log
from hvmesh.core.bus import notify
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.scheduling import group_unplace
from hvmesh.core.conductor.work_route import work_subject
from hvmesh.core.protocol import states, subjects
from hvmesh.core.protocol.base import encode, now
from hvmesh.core.protocol.messages import AgentEvent, Task, Work
from hvmesh.core.protocol.records import Fault, Server
from hvmesh.core.state import action_log, liveness, placement, ports, quotas, usage_ledger

LOG = log.get_logger(__name__)


async def delete(ctx: ConductorContext, task: Task) -> bool:
    entry = await ctx.st.servers.get(task.server_id)
    if entry is None:
        return True
    srv = entry.value
    if srv.task_state != states.DELETING:
        return True
    # Every host that may hold the instance: its own, and both ends of a move.
    hosts = [h for h in dict.fromkeys([srv.host, *_move_hosts(srv)]) if h]
    up = [h for h in hosts if await host_up(ctx, h)]
    if not up:
        # No host that holds it answers: delete here, as Nova's local delete does.
        # A host that comes back removes the instance when it reconciles.
        await finish_delete(ctx, srv.id, None)
        return True
    for host in up:
        work = Work(kind="destroy", server_id=srv.id, host=host, request_id=task.request_id)
        await ctx.js.publish(
            await work_subject(ctx.st, host),
            encode(work),
            headers={"Nats-Msg-Id": f"{srv.id}:destroy:{task.request_id}:{host}"},
        )
    timer = Task(
        kind="timer",
        server_id=srv.id,
        request_id=task.request_id,
        timer="delete-timeout",
        not_before=now() + ctx.cfg.conductor.action_timeout,
        params={"hosts": ",".join(up)},
    )
    await ctx.js.publish(
        subjects.timer("delete-timeout"),
        encode(timer),
        headers={"Nats-Msg-Id": f"{srv.id}:delete-timeout:{task.request_id}"},
    )
    return True


async def timed_out(ctx: ConductorContext, task: Task) -> None:
    """A delete whose hosts never answered ends in ERROR, to be deleted again.

    Deleting again finds the host down (a local delete) or sends the destroy anew.
    """
    hosts = task.params.get("hosts", "")
    waited = ctx.cfg.conductor.action_timeout
    LOG.warning("conductor.delete_timeout", server=task.server_id, hosts=hosts)
    await fail_delete(
        ctx,
        task.server_id,
        task.request_id,
        f"Delete failed: timed out after {waited:g}s waiting for host {hosts}",
    )


async def host_up(ctx: ConductorContext, host: str) -> bool:
    return await liveness.is_up(ctx.st, host, ctx.cfg.DEFAULT.service_down_time)


async def finish_delete(ctx: ConductorContext, server_id: str, host: str | None) -> None:
    """Give back every claim the server holds, then remove its record."""
    if host:
        await placement.release(ctx.st, host, server_id)
    entry = await ctx.st.servers.get(server_id)
    if entry is None:
        return
    srv = entry.value
    for h in dict.fromkeys([srv.host, *_move_hosts(srv)]):
        if h and h != host:
            await placement.release(ctx.st, h, server_id)
    if srv.migration is not None:  # the source's claim, held under the migration's id
        for h in _move_hosts(srv):
            await placement.release(ctx.st, h, srv.migration.id)
    await group_unplace(ctx.st, srv, leave=True)
    await ports.let_go_all(ctx.st, srv)
    await usage_ledger.record(ctx.st, srv)
    await ctx.st.servers.delete(server_id)
    await quotas.release(ctx.st, srv.project, [quotas.server_key(server_id)])
    if srv.request_id:
        await action_log.finish(ctx.st, server_id, srv.request_id)
    await notify.send(ctx.nc, "instance.delete.end", srv)
    LOG.info("conductor.deleted", server=server_id)


async def on_destroyed(ctx: ConductorContext, ev: AgentEvent) -> None:
    if ev.ok:
        await finish_delete(ctx, ev.server_id, ev.host)
        return

    await fail_delete(ctx, ev.server_id, ev.request_id, f"Delete failed on {ev.host}: {ev.message}")


async def fail_delete(ctx: ConductorContext, server_id: str, request_id: str, message: str) -> None:
    """The delete `request_id` ends in ERROR with `message`, if the server is still in it.

    The delete action closes with the error; the server can be deleted again.
    """
    ended: list[bool] = []

    def to_error(s: Server) -> Server | None:
        ended.clear()
        if s.task_state != states.DELETING or (request_id and s.request_id != request_id):
            return None
        ended.append(True)
        return msgspec.structs.replace(
            s,
            vm_state=states.ERROR,
            task_state=None,
            request_id=None,
            fault=Fault(code=500, message=message),
            updated_at=now(),
        )

    await ctx.st.servers.mutate(server_id, to_error)
    if ended and request_id:
        await action_log.finish(ctx.st, server_id, request_id, message)
    LOG.info("conductor.delete_failed", server=server_id, reason=message)


def _move_hosts(srv: Server) -> list[str]:
    m = srv.migration
    return [h for h in (m.source_host, m.dest_host) if h] if m is not None else []
