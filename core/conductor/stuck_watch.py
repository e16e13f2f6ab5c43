"""Servers whose task stopped moving, ended by the conductor on its own, as Nova's build timeout does.

A task can be orphaned where no timer covers it: an API process killed between writing a
server's record and queuing its build leaves the server building/scheduling with no
build anywhere. Every `[conductor] stuck_check_interval` (0: never) the conductor ends
each server whose task_state has stayed unchanged past its limit
(core/state/stuck_servers.py): a build goes to ERROR, any other task is dropped, with a
fault saying since when. A delete is not dropped: it was acknowledged, so its task is
queued again (its own timeout ends it in ERROR if the hosts never answer). The servers with a task are followed by a KV watch, so a check
reads nothing; each end is a compare-and-set on a fresh read, so several conductors
ending the same server change it once, and a server that moved on is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.protocol import states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import Task
from hvmesh.core.protocol.records import Server
from hvmesh.core.state import bucket_watch, stuck_servers
from hvmesh.core.state.tasks import publish_task
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)


class StuckWatch:
    def __init__(
        self,
        ctx: ConductorContext,
        after_end: Callable[[Server], Awaitable[None]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.after_end = after_end  # what follows an ended task (re-arming a timer), if any
        self.busy: dict[str, Server] = {}  # servers with a task_state, by id
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[Any] = []

    def start(self) -> None:
        if self.ctx.cfg.conductor.stuck_check_interval <= 0:
            return
        servers = self.ctx.st.servers

        def take(key: str, value: bytes | None, revision: int) -> None:
            server = servers.decode(value) if value else None
            if server is not None and server.task_state is not None:
                self.busy[key] = server
            else:
                self.busy.pop(key, None)

        loaded = asyncio.Event()
        watch = bucket_watch.watch(
            servers, take, loaded, self._watchers, lambda: None, "conductor.stuck_watch"
        )
        self._tasks = [asyncio.create_task(watch), asyncio.create_task(self._check_loop())]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()
        self._watchers = []

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.cfg.conductor.stuck_check_interval)
            try:
                await self.check()
            except Exception:
                LOG.exception("conductor.stuck_check_failed")

    async def check(self) -> int:
        """End every server stuck now; how many this conductor ended."""
        cfg, at, ended = self.ctx.cfg, now(), 0
        for seen in [s for s in self.busy.values() if stuck_servers.is_stuck(s, cfg, at)]:
            if seen.task_state == states.DELETING and seen.request_id:
                await self.delete_again(seen)
                continue
            if await stuck_servers.end_stuck(self.ctx.st, seen, "the conductor"):
                ended += 1
                LOG.warning(
                    "conductor.stuck_ended",
                    server=seen.id,
                    vm_state=seen.vm_state,
                    task_state=seen.task_state,
                    since=stuck_servers.since(seen.updated_at),
                )
                if self.after_end is not None:
                    await self.after_end(seen)
        return ended

    async def delete_again(self, seen: Server) -> bool:
        """Queue a stuck delete's task again (its first was lost on the way: an API
        process that died, a publish no stream took); whether this conductor did."""
        # A new message id for each time it is queued again, the same for every
        # conductor that saw the same record (JetStream keeps one of their copies).
        retry = int(seen.updated_at * 1000) % 2**31

        def touch(s: Server) -> Server | None:
            if s.task_state != states.DELETING or s.updated_at != seen.updated_at:
                return None  # moved on, or another conductor queued it again
            return msgspec.structs.replace(s, updated_at=now())

        written = await self.ctx.st.servers.mutate(seen.id, touch)
        if written is None or written.value.updated_at == seen.updated_at:
            return False
        assert seen.request_id is not None
        task = Task(kind="delete", server_id=seen.id, request_id=seen.request_id, attempt=retry)
        await publish_task(self.ctx.js, task)
        LOG.warning("conductor.stuck_delete_queued", server=seen.id, request=seen.request_id)
        return True
