"""The periodic upkeep of one agent process's hosts (power-state sync, reconcile): one loop per kind.

A process running thousands of hosts would otherwise keep a timer per host for each kind
of upkeep, all waking on their own. Here each kind, at one interval, is one loop that
walks the hosts joined to it in rounds, spreading them evenly over the interval (host i
of n starts at i/n of it) and running one at a time, so a round costs what the hosts'
own jobs cost and never more at once. The first round starts at a random point of the
interval, so processes started together do not report together (or a set time after
the loop starts, for a kind also run when a host starts); a host that joins
during a round waits for the next. A job that fails is logged and the round goes on; one
that outlasts its share only delays the hosts after it. A host that leaves while its job
runs has that job cancelled. With no host joined, the loop ends.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Awaitable, Callable

from hvmesh.core import log
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

Job = Callable[[], Awaitable[None]]

_rounds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, float], Rounds]] = (
    weakref.WeakKeyDictionary()
)


class Rounds:
    """One kind of upkeep at one interval, for every host of this process that joins."""

    def __init__(self, kind: str, interval: float, first_after: float | None = None) -> None:
        self.kind = kind
        self.interval = interval
        # When the first round starts: this many seconds after the loop does, or (None)
        # at a random point of the interval.
        self.first_after = first_after
        self.jobs: dict[str, Job] = {}
        self._loop: asyncio.Task[None] | None = None
        self._running: tuple[str, Job, asyncio.Task[None]] | None = None

    @classmethod
    def of(cls, kind: str, interval: float, first_after: float | None = None) -> Rounds:
        """The rounds of `kind` at `interval` in this process (its running event loop)."""
        by_kind = _rounds.setdefault(asyncio.get_running_loop(), {})
        rounds = by_kind.get((kind, interval))
        if rounds is None:
            rounds = by_kind[(kind, interval)] = cls(kind, interval, first_after)
        return rounds

    def join(self, host: str, job: Job) -> None:
        """Run `job` for `host` once a round from the next round on."""
        self.jobs[host] = job
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run(), name=f"upkeep-{self.kind}")

    async def leave(self, host: str, job: Job) -> None:
        """Run `job` for `host` no more (if another has joined for it since, that one stays);
        cancel it if it runs now, and wait for it to end."""
        if self.jobs.get(host) == job:
            del self.jobs[host]
        running = self._running
        if running is not None and running[:2] == (host, job):
            await stop_tasks([running[2]])
        if not self.jobs and self._loop is not None:
            loop, self._loop = self._loop, None
            await stop_tasks([loop])

    async def _run(self) -> None:
        first = self.first_after
        await asyncio.sleep(random.uniform(0, self.interval) if first is None else first)
        while self.jobs:
            started = time.monotonic()
            hosts = list(self.jobs)
            share = self.interval / len(hosts)
            for i, host in enumerate(hosts):
                await asyncio.sleep(max(0.0, started + i * share - time.monotonic()))
                job = self.jobs.get(host)
                if job is not None:
                    await self._one(host, job)
            await asyncio.sleep(max(0.0, started + self.interval - time.monotonic()))

    async def _one(self, host: str, job: Job) -> None:
        task = asyncio.ensure_future(job())
        self._running = (host, job, task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():  # this loop is cancelled, not the job: end it too
                await stop_tasks([task])
                raise
        except Exception:
            LOG.exception("agent.upkeep_failed", kind=self.kind, host=host)
        finally:
            self._running = None
