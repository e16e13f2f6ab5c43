"""One reconnect signal per NATS connection, so many long-polling workers share one watcher.

A reconnect can lose what the server held for the client, such as a pull request waiting
for work. Workers that wait long on such requests wait on `changed` as well; one task per
connection notices the reconnect count move (nats-py's stats) and wakes them all at once,
instead of every worker looking on a timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

CHECK_INTERVAL = 1.0  # seconds between looks at the connection's reconnect count

_signals: weakref.WeakKeyDictionary[Any, ReconnectSignal] = weakref.WeakKeyDictionary()


class ReconnectSignal:
    """`changed` is set (and replaced by a fresh event) each time the connection reconnects."""

    def __init__(self, nc: Any) -> None:
        self._nc = weakref.ref(nc)
        self.changed = asyncio.Event()
        self._seen = self._count(nc)
        self._task = asyncio.create_task(self._watch(), name="reconnect-signal")

    @staticmethod
    def _count(nc: Any) -> int:
        return int(nc.stats.get("reconnects", 0))

    async def _watch(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(CHECK_INTERVAL)
                nc = self._nc()
                if nc is None or nc.is_closed:
                    return
                count = self._count(nc)
                if count != self._seen:
                    self._seen = count
                    fired, self.changed = self.changed, asyncio.Event()
                    fired.set()


def signal_of(nc: Any) -> ReconnectSignal:
    """The connection's signal, made (and its watcher started) on first use."""
    found = _signals.get(nc)
    if found is None or found._task.done():
        found = _signals[nc] = ReconnectSignal(nc)
    return found
