"""Stopping background tasks within a bound, even when one swallows its cancellation.

A task cancelled while a library call inside it finishes at the same moment may lose the
cancellation (Python 3.11's `asyncio.wait_for` returns the result instead of raising), and
a loop in that task carries on as if never asked to stop. Awaiting such a task after one
`cancel()` waits forever; `stop_tasks` cancels again until each task ends, and gives up,
naming what is left, after `grace` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from hvmesh.core import log

LOG = log.get_logger(__name__)

RECANCEL_EVERY = 0.2  # seconds between cancellations of a task that has not ended yet


async def stop_tasks(tasks: Iterable[asyncio.Future[Any] | None], grace: float = 5.0) -> None:
    """Cancel `tasks` and wait for them to end, for at most `grace` seconds in all."""
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            LOG.error("tasks.not_stopped", tasks=sorted(_name(t) for t in pending), grace=grace)
            return
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY, left))


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)
