"""Work the conductor gave up on: the server's build, delete or action ends with a fault.

When a task, timer or agent's event has failed `[conductor] max_deliveries` times
(core/bus/worker.py), its server must not wait in a task_state forever: a build ends in
ERROR with its claims and group placement given back, a delete ends in ERROR (it can be
deleted again), an action ends as a failed action does (Lifecycle.give_up). The fault
names the component and the last error.
"""

from __future__ import annotations

from hvmesh.core import log
from hvmesh.core.conductor import build, delete
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.lifecycle import Lifecycle
from hvmesh.core.protocol import states
from hvmesh.core.protocol.action_requests import action_name
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.state import placement

LOG = log.get_logger(__name__)


async def task_given_up(ctx: ConductorContext, lc: Lifecycle, task: Task, why: str) -> None:
    """A task or timer failed every delivery; `why` is "after N deliveries: <error>"."""
    what = f"timer {task.timer}" if task.kind == "timer" else f"task {task.kind}"
    message = f"conductor gave up on {what} {why}"
    LOG.error("conductor.gave_up", server=task.server_id, kind=task.kind, why=message)
    if task.kind == "build":
        for server_id in task.server_ids or [task.server_id]:
            await fail_build(ctx, server_id, task.attempt, message)
    elif task.kind == "delete":
        await delete.fail_delete(ctx, task.server_id, task.request_id, f"Delete failed: {message}")
    elif task.kind == "timer" and task.timer == "spawn-timeout":
        await fail_build(ctx, task.server_id, task.attempt, message)
    elif task.kind == "action" and task.action is not None:
        name = action_name(task.action)
        await fail_action(lc, task.server_id, task.request_id, name, message)
    elif task.request_id:  # a timer of an action
        name = task.params.get("action", "")
        await fail_action(lc, task.server_id, task.request_id, name, message)


async def event_given_up(ctx: ConductorContext, lc: Lifecycle, ev: AgentEvent, why: str) -> None:
    """An agent's event failed every delivery: the work it reports on ends as failed."""
    message = f"conductor gave up on {ev.kind} event from {ev.host} {why}"
    LOG.error("conductor.gave_up", server=ev.server_id, kind=ev.kind, why=message)
    entry = await ctx.st.servers.get(ev.server_id)
    if entry is None:
        return
    srv = entry.value
    if ev.action:
        if ev.request_id:
            await fail_action(lc, ev.server_id, ev.request_id, ev.action, message)
    elif ev.kind == "spawn":
        if srv.host == ev.host:  # only the spawn the server waits for
            await fail_build(ctx, ev.server_id, ev.attempt, message)
    elif ev.kind == "destroy":
        await delete.fail_delete(ctx, ev.server_id, ev.request_id, f"Delete failed: {message}")


async def fail_build(ctx: ConductorContext, server_id: str, attempt: int, message: str) -> None:
    """The build ends in ERROR; every claim it holds and its group placement go back."""
    entry = await ctx.st.servers.get(server_id)
    if entry is None:
        return
    srv = entry.value
    if srv.vm_state != states.BUILDING or srv.attempt != attempt:
        return  # done, deleted or superseded by a later attempt
    # A claim can be held before the server names its host (the scheduler claims first).
    for host in await ctx.st.hosts.values():
        if server_id in host.allocations:
            await placement.release(ctx.st, host.name, server_id)
    await build.fail_build(ctx, server_id, attempt, message)


async def fail_action(
    lc: Lifecycle, server_id: str, request_id: str, action: str, message: str
) -> None:
    """The action, if the server is still in it, ends as failed (Lifecycle.give_up)."""
    srv = await lc.current(server_id, request_id)
    if srv is not None:
        await lc.give_up(srv, action, message)
