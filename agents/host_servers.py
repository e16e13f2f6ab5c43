"""Which servers a host's records place on it, for the power-state sync, at the cost of its own.

The sync must report every server whose record names this host, including one the
hypervisor lost. Reading the whole servers bucket for that, on every host at every
interval, costs the fleet's size times the servers': a host instead keeps the ids it has
seen (each work item's server, each instance the hypervisor runs) and reads just those
records when it syncs, dropping the ones no longer placed here. Its first sync starts
from one scan of the bucket, shared by every host of an agent process (a fleet of
simulated hosts scans once, not once per host).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable
from typing import Any

from hvmesh.core.protocol.records import Server
from hvmesh.core.state.store import Store

#: A shared scan younger than this serves a host's first sync.
SCAN_FRESH = 300.0


class _SharedScan:
    """The servers bucket read once for every host of one connection: host -> server ids."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.at = 0.0
        self.by_host: dict[str, set[str]] = {}

    async def ids_on(self, store: Store, host: str) -> set[str]:
        async with self.lock:
            if time.monotonic() - self.at > SCAN_FRESH:
                by_host: dict[str, set[str]] = {}
                async for entry in store.servers.entries():
                    if entry.value.host:
                        by_host.setdefault(entry.value.host, set()).add(entry.value.id)
                self.by_host, self.at = by_host, time.monotonic()
            return set(self.by_host.get(host, ()))


_scans: weakref.WeakKeyDictionary[Any, _SharedScan] = weakref.WeakKeyDictionary()


class HostServers:
    """The server ids that may be placed on one host, and their records when asked."""

    def __init__(self, nc: Any, store: Store, host: str) -> None:
        self.store = store
        self.host = host
        self.ids: set[str] = set()
        self._scan = _scans.setdefault(nc, _SharedScan())
        self._loaded = False

    def seen(self, server_id: str) -> None:
        """Work for this server came to this host: its record may place it here now."""
        self.ids.add(server_id)

    async def placed_here(self, running: Iterable[str]) -> list[Server]:
        """The records that place a server on this host, of those seen or `running`."""
        if not self._loaded:
            self.ids |= await self._scan.ids_on(self.store, self.host)
            self._loaded = True
        found = []
        for server_id in sorted(self.ids | set(running)):
            entry = await self.store.servers.get(server_id)
            if entry is not None and entry.value.host == self.host:
                found.append(entry.value)
                self.ids.add(server_id)
            else:
                self.ids.discard(server_id)
        return found
