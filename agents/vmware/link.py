"""One vCenter connection shared by the drivers of one agent: a session for calls and a change watcher, opened by the first driver and closed by the last.

An agent that reports each ESXi host of a cluster as its own provider runs one driver per
host; they share this link, so vCenter sees two sessions per agent whatever the number of
hosts. Each driver subscribes the ESXi hosts it answers for (moref ids); a power change of
a VM is handed to the driver whose hosts include the one the VM runs on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hvmesh.agents.vmware import inventory
from hvmesh.agents.vmware.events import PowerWatcher
from hvmesh.agents.vmware.session import Session
from hvmesh.core import log
from hvmesh.core.config_drivers import VmwareSection

LOG = log.get_logger(__name__)

PowerListener = Callable[[str, int], Awaitable[None]]


class Link:
    def __init__(self, cfg: VmwareSection, name: str, probe_interval: float) -> None:
        self.cfg = cfg
        self.session = Session(cfg, name, probe_interval=probe_interval)
        self.events = PowerWatcher(
            Session(cfg, f"{name}-events", probe_interval=probe_interval),
            lambda si: inventory.locate(si, cfg).vm_root,
            self._dispatch,
            lambda si: inventory.locate(si, cfg).cluster,
            self._resources_changed,
        )
        self._users = 0
        self._lock = asyncio.Lock()
        #: subscriber -> (the ESXi host moref ids it answers for, its power listener)
        self._listeners: dict[str, tuple[set[str], PowerListener]] = {}
        #: subscriber -> what to call when the cluster's hosts or datastores change
        self._inventory: dict[str, Callable[[], Awaitable[None]]] = {}

    async def acquire(self) -> None:
        """Open the link for one more driver (connecting if it is the first)."""
        async with self._lock:
            if self._users == 0:
                await self.session.open()
                try:
                    await self.events.start()
                except BaseException:
                    await self.session.close()
                    raise
            self._users += 1

    async def release(self) -> None:
        """One driver is done with the link; the last one closes it."""
        async with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                await self.events.stop()
                await self.session.close()

    def subscribe(
        self,
        name: str,
        hosts: set[str],
        listener: PowerListener,
        inventory_changed: Callable[[], Awaitable[None]],
    ) -> None:
        """Hand power changes of VMs on `hosts` to `listener`, and changes of the cluster's
        hosts and datastores to `inventory_changed` (replacing `name`'s earlier)."""
        self._listeners[name] = (hosts, listener)
        self._inventory[name] = inventory_changed

    def unsubscribe(self, name: str) -> None:
        self._listeners.pop(name, None)
        self._inventory.pop(name, None)

    async def _resources_changed(self) -> None:
        for changed in list(self._inventory.values()):
            await changed()

    async def _dispatch(self, server_id: str, power_state: int, host: str) -> None:
        for hosts, listener in list(self._listeners.values()):
            if host in hosts:
                await listener(server_id, power_state)
