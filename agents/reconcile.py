"""Guests left behind: instances a hypervisor runs that no server places on its host, removed.

Such an instance is what an evacuation leaves on a host that was down (Nova's
_destroy_evacuated_instances), what a build given up on leaves, or what a failed spawn
or move leaves half made. Each removal holds the server's lock (the one its work items
take on this host) and reads the server record again under it, so a spawn for the same
server that came meanwhile is never undone.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.image_cache import ImageCache
from hvmesh.core import log
from hvmesh.core.protocol.records import Server
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

Hold = Callable[[str], AbstractAsyncContextManager[None]]


def placed_here(s: Server | None, host: str) -> bool:
    """Whether the server record places an instance on `host` (its own, or a move's end)."""
    if s is None:
        return False
    if s.host == host:
        return True
    m = s.migration
    return m is not None and host in (m.source_host, m.dest_host)


async def reconcile(
    store: Store, driver: ComputeDriver, host: str, hold: Hold, images: ImageCache | None
) -> list[str]:
    """Remove the instances no server places on `host`; the ones removed.

    An instance whose server is here (or moving to or from here) is kept, and its image
    pinned in the cache.
    """
    try:
        instances = await driver.list_instances()
    except NotImplementedError:
        return []
    removed = []
    for server_id in instances:
        entry = await store.servers.get(server_id)
        if placed_here(entry.value if entry else None, host):
            if entry is not None and images is not None:  # adopted: keep its image
                await _pin(store, images, entry.value)
            continue
        if await remove_if_not_placed(store, driver, host, hold, server_id):
            removed.append(server_id)
    return removed


async def remove_if_not_placed(
    store: Store, driver: ComputeDriver, host: str, hold: Hold, server_id: str
) -> bool:
    """Destroy the server's instance on `host` unless its record places it here now.

    The record is read under the server's lock: work for the server waits meanwhile, and
    a spawn that placed it here since is seen.
    """
    async with hold(server_id):
        entry = await store.servers.get(server_id)
        if placed_here(entry.value if entry else None, host):
            return False
        if server_id not in await driver.list_instances():
            return False
        LOG.warning("agent.orphan_destroyed", host=host, server=server_id)
        await driver.destroy(server_id)
        return True


async def remove_failed_spawn(driver: ComputeDriver, host: str, server_id: str) -> None:
    """A failed spawn's half-made instance, removed at once (its caller holds the lock).

    The failure reschedules the server elsewhere and it never spawns on this host again,
    so nothing here is its own any more.
    """
    try:
        if server_id in await driver.list_instances():
            LOG.warning("agent.failed_spawn_removed", host=host, server=server_id)
            await driver.destroy(server_id)
    except Exception:  # the next reconcile removes it
        LOG.exception("agent.failed_spawn_cleanup_failed", host=host, server=server_id)


async def _pin(store: Store, images: ImageCache, s: Server) -> None:
    """Pin every image an adopted instance boots from: root, kernel and ramdisk."""
    image = await store.images.get(s.image_id)
    await images.pin_instance(s.id, image.value if image is not None else None, s.image_properties)
