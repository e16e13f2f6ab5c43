"""The subject a host's work goes on: its own, or its group's (agents/work_groups.py).

A host record names the group whose consumer takes its work (`Host.work_group`, written
by the host's own agent); the conductor keeps what it read for ROUTE_TTL seconds, per
store, so a boot costs no extra read while the fleet stays as it is, and a fleet
restarted in other groups is followed within that time.
"""

from __future__ import annotations

import time
import weakref

from hvmesh.core.protocol import subjects
from hvmesh.core.state.store import Store

ROUTE_TTL = 30.0

_known: weakref.WeakKeyDictionary[Store, dict[str, tuple[str, float]]] = weakref.WeakKeyDictionary()


async def work_subject(st: Store, host: str) -> str:
    """hvmesh.work.<host>, or hvmesh.work.<group>.<host> for a host of a group."""
    known = _known.setdefault(st, {})
    group, until = known.get(host, ("", 0.0))
    if until < time.monotonic():
        entry = await st.hosts.get(host)
        group = entry.value.work_group if entry is not None else ""
        known[host] = (group, time.monotonic() + ROUTE_TTL)
    return subjects.work(host, group)
