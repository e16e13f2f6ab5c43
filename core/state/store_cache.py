"""One opened Store per NATS connection, shared by every host an agent process runs.

Opening a Store binds every bucket and stream (some thirty JetStream API requests); a
process running thousands of hosts on one connection opens it once, not once per host.
"""

from __future__ import annotations

import asyncio
import weakref

from nats.aio.client import Client

from hvmesh.core.state.store import Store

_opened: weakref.WeakKeyDictionary[Client, asyncio.Task[Store]] = weakref.WeakKeyDictionary()


async def for_connection(nc: Client, replicas: int = 1) -> Store:
    """The Store on `nc`, opened by the first caller; a failed open is tried again."""
    task = _opened.get(nc)
    if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
        task = asyncio.ensure_future(Store(nc.jetstream(), replicas=replicas).open())
        _opened[nc] = task
    return await asyncio.shield(task)
