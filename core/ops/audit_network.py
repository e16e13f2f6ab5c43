"""The audit's network part: do the networks' addresses, the ports and the servers agree?

    address_leaked  an address a network holds for a port that does not exist (or that
                    has another address): what a crash between taking an address and
                    writing its port leaves. One taken for a port still being written
                    (pending, younger than ipam.CLAIM_GRACE) is left alone.
    port_orphaned   a port bound to a server that does not exist (older than the grace:
                    a new server's ports are written just before the server)
    port_missing    a server whose interfaces name a port that does not exist

With heal: the address is given back, the orphaned port deleted (one made for the server)
or unbound (a user's port), the interface dropped from the server; each by
compare-and-set, only if the record still shows the finding.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from hvmesh.core.ops.audit_finding import Finding, Repair
from hvmesh.core.protocol import states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Network, Port, Server
from hvmesh.core.state import ipam, ports
from hvmesh.core.state.store import Store


def findings(
    networks: list[Network],
    port_list: list[Port],
    servers: dict[str, Server],
    at: float,
    grace: float = ipam.CLAIM_GRACE,
) -> list[Finding]:
    by_id = {p.id: p for p in port_list}
    found: list[Finding] = []
    for n in networks:
        for addr, port_id in sorted(n.ips.items()):
            port = by_id.get(port_id)
            if port is not None and port.network_id == n.id and port.ip == addr:
                continue
            since = n.pending.get(addr)
            if port is None and since is not None and since > at - grace:
                continue  # its port is being written
            why = (
                "does not exist" if port is None else f"has address {port.ip} on {port.network_id}"
            )
            found.append(
                Finding(
                    kind="address_leaked",
                    host="",
                    resource=f"network {n.id} {addr}",
                    message=f"{addr} on network {n.name} is held for port {port_id}, which {why}",
                )
            )
    for p in port_list:
        if p.server_id is None or p.server_id in servers or p.created_at > at - grace:
            continue
        found.append(
            Finding(
                kind="port_orphaned",
                host="",
                server_id=p.server_id,
                resource=f"port {p.id}",
                message=f"port {p.id} ({p.ip}) is bound to a server that does not exist",
            )
        )
    for s in servers.values():
        if s.task_state == states.DELETING:  # its ports are let go before its record
            continue
        for v in s.network_info:
            if v.port_id not in by_id:
                found.append(
                    Finding(
                        kind="port_missing",
                        host=s.host or "",
                        server_id=s.id,
                        resource=f"port {v.port_id}",
                        message=f"interface {v.ip} names port {v.port_id}, which does not exist",
                    )
                )
    return found


def _free(n: Network, address: str, port_id: str) -> Network | None:
    if n.ips.get(address) != port_id:
        return None
    ips = {a: p for a, p in n.ips.items() if a != address}
    pending = {a: t for a, t in n.pending.items() if a != address}
    return msgspec.structs.replace(n, ips=ips, pending=pending)


def _drop_interface(s: Server, port_id: str) -> Server | None:
    kept = [v for v in s.network_info if v.port_id != port_id]
    if len(kept) == len(s.network_info) or s.task_state == states.DELETING:
        return None
    return msgspec.structs.replace(s, network_info=kept, updated_at=now())


async def _free_if_portless(store: Store, network_id: str, address: str, port_id: str) -> None:
    port = await store.ports.get(port_id)
    if port is not None and port.value.network_id == network_id and port.value.ip == address:
        return  # written meanwhile
    await store.networks.mutate(
        network_id, functools.partial(_free, address=address, port_id=port_id)
    )


async def _let_go_if_still_orphaned(store: Store, server_id: str, port_id: str) -> None:
    if await store.servers.get(server_id) is None:
        await ports.let_go(store, server_id, port_id)


async def repairs(store: Store, servers: dict[str, Server]) -> list[Repair]:
    """Every network finding, each with its fix."""
    networks = await store.networks.values()
    port_list = await store.ports.values()
    found = findings(networks, port_list, servers, now())
    out: list[Repair] = []
    for f in found:
        port_id = f.resource.removeprefix("port ")
        fix: Callable[[], Awaitable[Any]]
        if f.kind == "address_leaked":
            _, network_id, address = f.resource.split(" ")
            held = next(n.ips[address] for n in networks if n.id == network_id)
            fix = functools.partial(_free_if_portless, store, network_id, address, held)
        elif f.kind == "port_orphaned":
            fix = functools.partial(_let_go_if_still_orphaned, store, f.server_id, port_id)
        else:
            change = functools.partial(_drop_interface, port_id=port_id)
            fix = functools.partial(store.servers.mutate, f.server_id, change)
        out.append((f, fix))
    return out
