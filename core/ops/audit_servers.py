"""The audit's server part: servers whose task has stopped moving.

    stuck  a server in a task_state unchanged for longer than any step of it can take
           (core/state/stuck_servers.py says how long)

With heal, it is ended as an operator's reset-state would (stuck_servers.end_stuck).
The conductor ends such servers on its own every [conductor] stuck_check_interval; the
audit finds those it has not come to yet, or all of them where that check is off.
"""

from __future__ import annotations

import functools

from hvmesh.core.config import Config
from hvmesh.core.ops.audit_finding import Finding, Repair
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Server
from hvmesh.core.state import stuck_servers
from hvmesh.core.state.store import Store


def findings(servers: dict[str, Server], cfg: Config, at: float) -> list[Finding]:
    return [
        Finding(
            kind="stuck",
            host=s.host or "",
            server_id=s.id,
            message=f"{s.vm_state}/{s.task_state} unchanged since "
            f"{stuck_servers.since(s.updated_at)}",
        )
        for s in servers.values()
        if stuck_servers.is_stuck(s, cfg, at)
    ]


async def end_stuck(store: Store, seen: Server) -> None:
    await stuck_servers.end_stuck(store, seen, "audit")


def repairs(store: Store, servers: dict[str, Server], cfg: Config) -> list[Repair]:
    return [
        (f, functools.partial(end_stuck, store, servers[f.server_id]))
        for f in findings(servers, cfg, now())
    ]
