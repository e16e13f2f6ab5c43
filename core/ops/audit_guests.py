"""The audit's hypervisor part: guests and image pins no server accounts for.

Each host that is up is asked (`hvmesh.agent.<host>.list_instances`) for the instances
its hypervisor runs and the servers whose images its cache pins:

    orphan_guest      an instance whose server does not exist, or is neither placed on
                      that host nor moving to or from it
    pin_orphaned      images pinned for such a server with no instance there: the cache
                      would never evict them
    host_unreachable  an up host whose agent did not answer in time (reported only)

With heal, the agent is asked to remove it (`hvmesh.agent.<host>.destroy_orphan`); it
reads the server record again under the server's lock and keeps anything placed there
meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from nats.aio.client import Client

from hvmesh.core.bus import micro as bus
from hvmesh.core.config import Config
from hvmesh.core.ops.audit_finding import Finding, Repair
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Server
from hvmesh.core.state import liveness
from hvmesh.core.state.store import Store

# Seconds one agent may take to answer; a destroy may take longer than a listing.
LIST_TIMEOUT = 5.0
DESTROY_TIMEOUT = 60.0


def placed_on(server: Server | None, host: str) -> bool:
    if server is None:
        return False
    m = server.migration
    return server.host == host or (m is not None and host in (m.source_host, m.dest_host))


async def _ask(nc: Client, host: str) -> tuple[str, dict[str, Any] | str]:
    try:
        return host, await bus.call(nc, subjects.agent(host, "list_instances"), {}, LIST_TIMEOUT)
    except errors.HvmeshError as exc:
        return host, exc.message


async def up_hosts(store: Store, cfg: Config) -> list[str]:
    cutoff = now() - cfg.DEFAULT.service_down_time
    return sorted(await liveness.up_since(store, cutoff))


def findings(
    replies: list[tuple[str, dict[str, Any] | str]], servers: dict[str, Server]
) -> list[Finding]:
    found: list[Finding] = []
    for host, reply in replies:
        if isinstance(reply, str):
            found.append(Finding(kind="host_unreachable", host=host, message=reply))
            continue
        instances = set(reply.get("instances", []))
        for sid in sorted(instances):
            server = servers.get(sid)
            if placed_on(server, host):
                continue
            where = "does not exist" if server is None else f"is on {server.host or 'no host'}"
            found.append(
                Finding(
                    kind="orphan_guest",
                    host=host,
                    server_id=sid,
                    message=f"the hypervisor runs an instance of a server that {where}",
                )
            )
        for sid in sorted(set(reply.get("pinned", [])) - instances):
            if not placed_on(servers.get(sid), host):
                found.append(
                    Finding(
                        kind="pin_orphaned",
                        host=host,
                        server_id=sid,
                        message="image cache pins held for a server not on this host",
                    )
                )
    return found


async def _destroy(nc: Client, host: str, server_id: str) -> None:
    await bus.call(
        nc, subjects.agent(host, "destroy_orphan"), {"server_id": server_id}, DESTROY_TIMEOUT
    )


async def repairs(nc: Client, store: Store, cfg: Config) -> list[Repair]:
    """Every hypervisor finding, each with its fix (none for an unreachable host)."""
    hosts = await up_hosts(store, cfg)
    replies = list(await asyncio.gather(*(_ask(nc, h) for h in hosts)))
    # Read after the listings: a server placed while they were taken is seen as placed.
    servers = {s.id: s for s in await store.servers.values()}
    return [
        (
            f,
            None
            if f.kind == "host_unreachable"
            else functools.partial(_destroy, nc, f.host, f.server_id),
        )
        for f in findings(replies, servers)
    ]
