"""Which servers a host's records place on it, for the power-state sync, at the cost of its own.

The sync must report every server whose record names this host, including one the
hypervisor lost. Reading the whole servers bucket for that, on every host at every
interval, costs the fleet's size times the servers': a host instead keeps the ids it has
seen (each work item's server, each instance the hypervisor runs, each allocation its
host record holds) and reads just those records when it syncs, dropping the ones no
longer placed here. A server placed on a host holds an allocation there (a claim made
it so), so the host record is where a host that has just started finds its servers.
"""

from __future__ import annotations

from collections.abc import Iterable

from hvmesh.core.protocol.records import Server
from hvmesh.core.state.store import Store


class HostServers:
    """The server ids that may be placed on one host, and their records when asked."""

    def __init__(self, store: Store, host: str) -> None:
        self.store = store
        self.host = host
        self.ids: set[str] = set()

    def seen(self, server_id: str) -> None:
        """Work for this server came to this host: its record may place it here now."""
        self.ids.add(server_id)

    async def placed_here(self, running: Iterable[str]) -> list[Server]:
        """The records that place a server on this host, of those seen, allocated here or
        `running`."""
        host = await self.store.hosts.get(self.host)
        allocated = set(host.value.allocations) if host is not None else set()
        found = []
        for server_id in sorted(self.ids | allocated | set(running)):
            entry = await self.store.servers.get(server_id)
            if entry is not None and entry.value.host == self.host:
                found.append(entry.value)
                self.ids.add(server_id)
            else:
                self.ids.discard(server_id)
        return found
