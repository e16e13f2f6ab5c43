"""Which hosts are up: their last heartbeats, read from records that may each speak for many.

An agent running one host writes its heartbeat under the host's name; an agent process
running many (a fake fleet, the ESXi hosts of a cluster, the nodes of a bare-metal
service) writes one record per group, under the group's first host, and each host record
names that key (`Host.beat_key`). Readers go through here and never care which.
"""

from __future__ import annotations

from hvmesh.core.protocol.base import now
from hvmesh.core.state.store import Store


async def last_beat(store: Store, host: str) -> float | None:
    """When `host` last heartbeat, or None if no record speaks for it."""
    entry = await store.heartbeats.get(host)
    if entry is not None:
        at = entry.value.beats().get(host)
        if at is not None:
            return at
    record = await store.hosts.get(host)
    key = record.value.beat_key if record is not None else ""
    if not key or key == host:
        return None
    entry = await store.heartbeats.get(key)
    return entry.value.beats().get(host) if entry is not None else None


async def is_up(store: Store, host: str, service_down_time: float) -> bool:
    """Whether `host` heartbeat within the last `service_down_time` seconds."""
    at = await last_beat(store, host)
    return at is not None and at >= now() - service_down_time


async def all_beats(store: Store) -> dict[str, float]:
    """Every host any heartbeat record speaks for, with its latest beat."""
    found: dict[str, float] = {}
    for record in await store.heartbeats.values():
        for host, at in record.beats().items():
            if at > found.get(host, 0.0):
                found[host] = at
    return found


async def up_since(store: Store, cutoff: float) -> set[str]:
    """The hosts whose last beat is at or after `cutoff`."""
    return {host for host, at in (await all_beats(store)).items() if at >= cutoff}
