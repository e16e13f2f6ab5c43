"""Agents' events applied: each outcome handed to its build, delete, action or power step."""

from __future__ import annotations

from hvmesh.core.conductor import build, delete, power_sync
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.lifecycle import Lifecycle
from hvmesh.core.protocol.messages import AgentEvent


async def apply(ctx: ConductorContext, lifecycle: Lifecycle, event: AgentEvent) -> None:
    """Apply one agent's event: an action's step, a spawn, a destroy or a power report."""
    if event.action:
        await lifecycle.on_event(event)
    elif event.kind == "spawn":
        await build.on_spawned(ctx, event)
    elif event.kind == "destroy":
        await delete.on_destroyed(ctx, event)
    elif event.kind == "power":
        await power_sync.apply(ctx, event)
