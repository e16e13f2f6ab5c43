"""Hosts that stop heartbeating: the work waiting on them fails over at once, not at its timeout.

Every `[conductor] host_check_interval` a conductor looks at the heartbeats it follows
(a KV watch). A host whose last heartbeat is older than `[DEFAULT] service_down_time`
has just gone down, once per such transition:

- each build in progress there (the host record's `in_progress`, checked against the
  server: still spawning on that host) fails as a failed spawn does, and is rescheduled;
- each action step waiting on it (a pending `timeout` timer for that host) times out
  now, as it would at `[conductor] action_timeout`, with the reason.

A host is taken for down only after a direct read of its heartbeat agrees with the
watch, which can lag behind after a reconnect. A host with no heartbeat record has
never been up and is left alone, as is one that has been down longer than
action_timeout (its timers have fired already). Every write this
does is the same compare-and-set the event or timer would do, so several conductors
noticing the same host at once change the records once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from nats.js.errors import NotFoundError

from hvmesh.core import log
from hvmesh.core.conductor import build
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.lifecycle import Lifecycle
from hvmesh.core.protocol import states, subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.state import liveness
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)


class HostMonitor:
    def __init__(self, ctx: ConductorContext, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.beats: dict[str, float] = {}  # host -> its last heartbeat's time
        self.covers: dict[str, list[str]] = {}  # heartbeat record key -> the hosts it names
        self.down: set[str] = set()  # hosts already failed over since they went down
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow_heartbeats()),
            asyncio.create_task(self._check_loop()),
        ]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []

    async def _follow_heartbeats(self) -> None:
        st = self.ctx.st
        while True:
            try:
                watcher = await st.heartbeats.kv.watchall()
                try:
                    async for e in watcher:
                        if e is None:
                            continue  # the initial values are in
                        if e.value and e.operation is None:
                            self.take(e.key, st.heartbeats.decode(e.value).beats())
                        else:
                            for host in self.covers.pop(e.key, []):
                                self.beats.pop(host, None)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("conductor.heartbeat_watch_failed")
            # The watch ended (a reconnect): follow again after a pause.
            await asyncio.sleep(self.ctx.cfg.conductor.host_check_interval)

    def take(self, key: str, beats: dict[str, float]) -> None:
        """Take the record at `key`: one host's heartbeat, or a group's."""
        self.covers[key] = list(beats)
        for host, at in beats.items():
            if at > self.beats.get(host, 0.0):
                self.beats[host] = at

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.cfg.conductor.host_check_interval)
            try:
                await self.check()
            except Exception:
                LOG.exception("conductor.host_check_failed")

    def newly_down(self, at: float) -> list[str]:
        """Hosts that went down since the last check (and still have timers pending)."""
        cfg = self.ctx.cfg
        limit = at - cfg.DEFAULT.service_down_time
        found = []
        for host, beat in self.beats.items():
            if beat >= limit:
                self.down.discard(host)
            elif host not in self.down:
                self.down.add(host)
                if beat >= limit - cfg.conductor.action_timeout:
                    found.append(host)
        return found

    async def check(self) -> None:
        for host in self.newly_down(now()):
            # The watch can lag (it resumes some seconds after a reconnect): the host is
            # down only if its heartbeat, read now, says so too.
            at = await liveness.last_beat(self.ctx.st, host)
            if at is not None and at >= now() - self.ctx.cfg.DEFAULT.service_down_time:
                self.beats[host] = max(self.beats.get(host, 0.0), at)
                self.down.discard(host)
                continue
            LOG.warning("conductor.host_down", host=host, last_heartbeat=self.beats.get(host))
            await self.fail_over(host)

    async def fail_over(self, host: str) -> None:
        """Fail what waits on `host` now: its builds in progress and its actions' steps."""
        reason = f"host {host} stopped heartbeating"
        st = self.ctx.st
        record = await st.hosts.get(host)
        for server_id in list(record.value.in_progress) if record else []:
            entry = await st.servers.get(server_id)
            s = entry.value if entry else None
            if s is None or s.vm_state != states.BUILDING or s.task_state != states.SPAWNING:
                continue
            if s.host != host:
                continue
            LOG.warning("conductor.build_failed_over", server=s.id, host=host, attempt=s.attempt)
            failed = AgentEvent(
                kind="spawn", server_id=s.id, host=host, ok=False, attempt=s.attempt, message=reason
            )
            await build.on_spawned(self.ctx, failed)
        async for timer in self._timeouts():
            if timer.params.get("host") != host:
                continue
            early = msgspec.structs.replace(timer, params={**timer.params, "why": reason})
            await self.lifecycle.on_timer(early)

    async def _timeouts(self) -> AsyncIterator[Task]:
        """The action steps' timeouts still pending, read from the timers stream."""
        js = self.ctx.js
        subject = subjects.timer("timeout")
        seq = 1
        while True:
            try:
                msg = await js.get_msg(subjects.TIMERS_STREAM, seq=seq, subject=subject, next=True)
            except NotFoundError:
                return
            assert msg.seq is not None
            seq = msg.seq + 1
            try:
                yield msgspec.json.decode(msg.data or b"", type=Task)
            except msgspec.DecodeError:
                continue
