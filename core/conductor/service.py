"""The conductor: takes tasks from the durable queue, drives them, applies agents' events.

Every step is a compare-and-set on the server record, checked against the state the
step expects, so a task or event handled twice (after a conductor dies and another
takes over) changes nothing the second time. Tasks are acknowledged only once their
effect is written, so a conductor killed mid-task leaves the task to the next one.

This module is the service: its consumers, start and stop, and the wiring. A boot is
in build.py, a delete in delete.py, agents' events in events.py, server actions in
lifecycle.py and the modules that register with it.
"""

from __future__ import annotations

import functools
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from hvmesh.core import log
from hvmesh.core.bus.worker import PullWorker, Retry, durable_pull
from hvmesh.core.conductor import (
    build,
    delete,
    events,
    exhausted,
    interfaces,
    live_migration,
    moves,
    power_actions,
    resize,
    shelving,
    snapshot,
)
from hvmesh.core.conductor.host_monitor import HostMonitor
from hvmesh.core.conductor.lifecycle import Lifecycle, NotYet
from hvmesh.core.conductor.stuck_watch import StuckWatch
from hvmesh.core.conductor.work_consumers import WorkConsumerSweep
from hvmesh.core.config import Config
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.state import dead_letters
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

SCHEDULER_RETRY_DELAY = 2.0  # seconds before a task that found no scheduler is retried


class Conductor:
    def __init__(self, nc: Client, cfg: Config) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = cfg
        self.store: Store | None = None
        self._workers: list[PullWorker[Any]] = []
        self.work_consumers: WorkConsumerSweep | None = None
        self.lifecycle = Lifecycle(self)
        for module in ACTION_MODULES:
            module.register(self.lifecycle)
        self.host_monitor = HostMonitor(self, self.lifecycle)
        self.stuck_watch = StuckWatch(
            self, after_end=lambda seen: resize.after_stuck(self.lifecycle, seen)
        )

    @property
    def st(self) -> Store:
        assert self.store is not None
        return self.store

    async def start(self) -> None:
        self.store = await Store(self.js, replicas=self.cfg.nats.replicas).open()
        await self.store.scale()  # streams made before [nats] replicas changed
        ack_wait = self.cfg.conductor.task_ack_wait
        n = self.cfg.conductor.workers
        # A build waiting for a scheduler is nak'd on purpose: room for those deliveries too.
        waits = int(self.cfg.conductor.scheduler_deadline / SCHEDULER_RETRY_DELAY) + 1
        retry, task_retry = Retry.of(self.cfg.conductor), Retry.of(self.cfg.conductor, waits)
        tasks = await durable_pull(
            self.js,
            subjects.TASKS_ALL,
            subjects.CONDUCTOR_TASKS_DURABLE,
            subjects.TASKS_STREAM,
            ack_wait,
            max_ack_pending=n * 8,
            max_deliver=task_retry.max_deliver,
        )
        agent_events = await durable_pull(
            self.js,
            subjects.EVENTS_ALL,
            subjects.CONDUCTOR_EVENTS_DURABLE,
            subjects.EVENTS_STREAM,
            ack_wait,
            max_ack_pending=n * 8,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=retry.max_deliver,
        )
        timers = await durable_pull(
            self.js,
            subjects.TIMERS_ALL,
            subjects.CONDUCTOR_TIMERS_DURABLE,
            subjects.TIMERS_STREAM,
            ack_wait,
            max_ack_pending=-1,  # timers wait their turn unacknowledged: no limit
            max_deliver=retry.max_deliver,
        )
        self._workers = [
            self._worker("conductor-tasks", tasks, Task, self.handle_task, task_retry),
            self._worker("conductor-events", agent_events, AgentEvent, self.handle_event, retry),
            self._worker("conductor-timers", timers, Task, self.handle_timer, retry),
        ]
        for worker in self._workers:
            worker.start()
        self.host_monitor.start()
        self.stuck_watch.start()
        self.work_consumers = WorkConsumerSweep(self.js, self.store)
        self.work_consumers.start()
        LOG.info("conductor.started")

    def _worker(
        self, name: str, sub: Any, type_: type, handler: Any, retry: Retry
    ) -> PullWorker[Any]:
        """A worker with the [conductor] delivery limit and backoff, keeping dead letters."""
        given_up = self.event_given_up if type_ is AgentEvent else self.task_given_up
        keep = functools.partial(dead_letters.keep, self.js)
        return PullWorker(
            name, sub, type_, handler, self.cfg.conductor.workers,
            retry=retry, on_exhausted=given_up, keep=keep,
        )  # fmt: skip

    async def task_given_up(self, task: Task, msg: Msg, why: str) -> None:
        """A task or timer failed every delivery: its server's work ends with a fault."""
        await exhausted.task_given_up(self, self.lifecycle, task, why)

    async def event_given_up(self, event: AgentEvent, msg: Msg, why: str) -> None:
        """An agent's event failed every delivery: the work it reports on ends as failed."""
        await exhausted.event_given_up(self, self.lifecycle, event, why)

    async def stop(self) -> None:
        if self.work_consumers is not None:
            await self.work_consumers.stop()
        await self.stuck_watch.stop()
        await self.host_monitor.stop()
        for worker in self._workers:
            await worker.stop()

    async def handle_task(self, task: Task, msg: Msg) -> None:
        retry_in = SCHEDULER_RETRY_DELAY
        if task.kind == "build":
            wait = await build.build(self, task)  # a number: no scheduler yet, ask again then
            done = wait is None
            retry_in = wait if wait is not None else retry_in
        elif task.kind == "delete":
            done = await delete.delete(self, task)
        elif task.kind == "action":
            await self.lifecycle.on_task(task)
            done = True
        else:
            LOG.error("conductor.unknown_task", kind=task.kind)
            done = True
        if done:
            await msg.ack()
        else:
            await msg.nak(delay=retry_in)

    async def handle_timer(self, task: Task, msg: Msg) -> None:
        """A timer runs when due; until then it goes back to wait (a delayed redelivery)."""
        wait = task.not_before - now()
        if wait > 0:
            await msg.nak(delay=wait)
            return
        if task.timer == "spawn-timeout":
            await build.spawn_timed_out(self, task)
        elif task.timer == "delete-timeout":
            await delete.timed_out(self, task)
        else:
            try:
                await self.lifecycle.on_timer(task)
            except NotYet as later:  # each try is a delivery: bounded by max_deliver
                LOG.info("conductor.timer_not_yet", timer=task.timer, server=task.server_id)
                await msg.nak(delay=later.delay)
                return
        await msg.ack()

    async def handle_event(self, event: AgentEvent, msg: Msg) -> None:
        await events.apply(self, self.lifecycle, event, msg.subject)
        await msg.ack()


# Each registers its actions with the conductor's Lifecycle.
ACTION_MODULES = [power_actions, resize, live_migration, moves, shelving, interfaces, snapshot]
