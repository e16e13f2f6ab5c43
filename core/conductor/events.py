"""Agents' events applied: each outcome handed to its build, delete, action or power step.

An event is applied only when event_checks finds it trusted (from the host it names,
expected by the server, for the request it answers, fitting the server's state); any
other is logged as `conductor.event_rejected` and dropped.
"""

from __future__ import annotations

from hvmesh.core import log
from hvmesh.core.conductor import build, delete, event_checks, power_sync
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.lifecycle import Lifecycle
from hvmesh.core.protocol.messages import AgentEvent

LOG = log.get_logger(__name__)


async def apply(
    ctx: ConductorContext, lifecycle: Lifecycle, event: AgentEvent, subject: str | None = None
) -> None:
    """Apply one agent's event: an action's step, a spawn, a destroy or a power report.

    `subject` is the one the event came on (None: the conductor made it itself).
    """
    entry = await ctx.st.servers.get(event.server_id)
    why = event_checks.rejection(event, entry.value if entry else None, subject)
    if why is not None:
        # A power report can be outrun by the server's move or delete: no alarm for those.
        report = LOG.info if event.kind == "power" else LOG.warning
        report(
            "conductor.event_rejected",
            server=event.server_id,
            host=event.host,
            kind=event.kind,
            action=event.action or None,
            why=why,
        )
        return
    if event.action:
        await lifecycle.on_event(event)
    elif event.kind == "spawn":
        await build.on_spawned(ctx, event)
    elif event.kind == "destroy":
        await delete.on_destroyed(ctx, event)
    elif event.kind == "power":
        await power_sync.apply(ctx, event, entry.value if entry else None)
