"""The audit's server part: servers whose task has stopped moving.

    stuck  a server in a task_state unchanged for longer than any step of it can take:
           a build still scheduling after [conductor] scheduler_deadline +
           action_timeout, any other task_state after twice action_timeout

With heal, it is ended as an operator's reset-state would: a build goes to ERROR, any
other task is dropped with the vm_state kept; either way with a fault saying since when
it was stuck, its running action closed with that error, by compare-and-set on a
record that has not changed since it was read.
"""

from __future__ import annotations

import datetime
import functools

import msgspec

from hvmesh.core.config import Config
from hvmesh.core.ops.audit_finding import Finding, Repair
from hvmesh.core.protocol import states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Fault, Server
from hvmesh.core.state import action_log, placement
from hvmesh.core.state.store import Store


def limit(server: Server, cfg: Config) -> float:
    """Seconds the server's task_state may stay unchanged."""
    c = cfg.conductor
    if server.task_state == states.SCHEDULING:
        return c.scheduler_deadline + c.action_timeout
    return 2 * c.action_timeout


def since(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")


def findings(servers: dict[str, Server], cfg: Config, at: float) -> list[Finding]:
    found: list[Finding] = []
    for s in servers.values():
        if s.task_state is None or at - s.updated_at <= limit(s, cfg):
            continue
        found.append(
            Finding(
                kind="stuck",
                host=s.host or "",
                server_id=s.id,
                message=f"{s.vm_state}/{s.task_state} unchanged since {since(s.updated_at)}",
            )
        )
    return found


def _end(s: Server, seen: Server) -> Server | None:
    """`s` ended as reset-state would, if it is still as `seen`."""
    if s.task_state != seen.task_state or s.updated_at != seen.updated_at:
        return None
    fault = Fault(
        code=500,
        message=f"stuck in {s.task_state} since {since(s.updated_at)}, ended by audit",
    )
    vm_state = states.ERROR if s.vm_state == states.BUILDING else s.vm_state
    return msgspec.structs.replace(
        s, vm_state=vm_state, task_state=None, request_id=None, fault=fault, updated_at=now()
    )


async def end_stuck(store: Store, seen: Server) -> None:
    ended: list[Server] = []

    def change(s: Server) -> Server | None:
        new = _end(s, seen)
        ended[:] = [new] if new is not None else []
        return new

    await store.servers.mutate(seen.id, change)
    if not ended:
        return
    if seen.host and seen.vm_state == states.BUILDING:  # no build goes on there now
        await placement.not_in_progress(store, seen.host, seen.id)
    if seen.request_id and ended[0].fault is not None:
        await action_log.finish(store, seen.id, seen.request_id, error=ended[0].fault.message)


def repairs(store: Store, servers: dict[str, Server], cfg: Config) -> list[Repair]:
    return [
        (f, functools.partial(end_stuck, store, servers[f.server_id]))
        for f in findings(servers, cfg, now())
    ]
