"""The work of a group of one agent process's hosts, taken from one durable consumer.

A host alone in its process has its own consumer (hvmesh.work.<host>, `agent-<host>`),
which its credentials allow it to make. The hosts of a process planned into one
heartbeat group (agents/heartbeats.py) share one: their host records name the group
(`Host.work_group`), the conductor publishes their work on hvmesh.work.<group>.<host>,
and the group's consumer (`agents-<group>`, one filter: hvmesh.work.<group>.*) hands
each item to its host's runtime. At 10,000 hosts that is 10 consumers and 10 waiting
pull requests instead of 10,000 of each. Only a host's own agent writes its host record,
so no agent can draw another's work into its group. Every guarantee of a host's own
consumer holds: an item is acknowledged only after its event is published, one a dead
process held is delivered again after the ack wait, and one that failed every delivery
is reported failed by its host. An item for a host of the group that has not started
yet waits for it, then goes back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from hvmesh.agents.heartbeats import Heartbeats
from hvmesh.core import log
from hvmesh.core.bus.reconnects import signal_of
from hvmesh.core.bus.worker import PullWorker, Retry, durable_pull
from hvmesh.core.config import Config
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.messages import Work
from hvmesh.core.state import dead_letters

LOG = log.get_logger(__name__)

# A work item held by an agent that died is handed out again after this long; a live
# agent keeps its items in progress meanwhile, however long a step runs.
WORK_ACK_WAIT = 30.0
# An idle agent's pull request for work waits this long before it is renewed: the cost of
# an idle host (one request per window) falls with it, while work still arrives at once.
WORK_FETCH_WINDOW = 30.0
JOIN_WAIT = 20.0  # seconds an item waits for its host to start before going back
JOIN_RETRY = 5.0  # and then how long before it is delivered again
MOST_AT_ONCE = 1024  # items one group's consumer runs at once (each host: [compute] workers)


class Member(Protocol):
    """What a host's runtime offers its group."""

    host: str

    async def handle(self, work: Work, msg: Msg) -> None: ...
    async def give_up(self, work: Work, msg: Msg, why: str) -> None: ...


def host_of(msg: Msg) -> str:
    """The host a work item is for: its subject's last token."""
    return msg.subject.rsplit(".", 1)[-1]


class _Group:
    def __init__(self, key: str, hosts: list[str]) -> None:
        self.key = key
        self.hosts = hosts
        self.members: dict[str, Member] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.worker: PullWorker[Work] | None = None
        self.lock = asyncio.Lock()

    def arrival(self, host: str) -> asyncio.Event:
        return self.arrived.setdefault(host, asyncio.Event())


class WorkGroups:
    """The work consumers of one process's host groups (those planned in `beats`)."""

    def __init__(self, nc: Client, cfg: Config, beats: Heartbeats) -> None:
        self.nc = nc
        self.cfg = cfg
        self.beats = beats
        self._groups: dict[str, _Group] = {}

    def group_of(self, host: str) -> str:
        """The group whose consumer takes `host`'s work; "" when the host has its own."""
        hosts = self.beats.group_of(host)
        return self.beats.key_of(host) if len(hosts) > 1 else ""

    async def join(self, member: Member) -> None:
        """Hand `member` its host's work from now on, starting the group's consumer."""
        key = self.group_of(member.host)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, self.beats.group_of(member.host))
        group.members[member.host] = member
        group.arrival(member.host).set()
        try:
            async with group.lock:
                if group.worker is None:
                    group.worker = await self._start(group)
        except BaseException:
            await self.leave(member)  # its start failed: it is not there to hand work to
            raise

    async def leave(self, member: Member) -> None:
        """Stop handing `member` work; the last to leave stops the group's consumer."""
        group = self._groups.get(self.group_of(member.host))
        if group is None or group.members.get(member.host) is not member:
            return
        del group.members[member.host]
        group.arrived.pop(member.host, None)
        if not group.members:
            async with group.lock:
                worker, group.worker = group.worker, None
                if worker is not None:
                    await worker.stop()

    async def _start(self, group: _Group) -> PullWorker[Work]:
        js = self.nc.jetstream()
        retry = Retry.of(self.cfg.conductor)
        per_host = self.cfg.compute.workers
        sub = await durable_pull(
            js,
            subjects.group_work(group.key),
            subjects.group_durable(group.key),
            subjects.WORK_STREAM,
            WORK_ACK_WAIT,
            max_ack_pending=max(per_host * 4, 16) * len(group.hosts),
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=retry.max_deliver,
        )
        worker: PullWorker[Work] = PullWorker(
            f"agents-{group.key}", sub, Work, functools.partial(self._route, group),
            min(per_host * len(group.hosts), MOST_AT_ONCE),
            retry=retry, on_exhausted=functools.partial(self._exhausted, group),
            keep=functools.partial(_keep, js), fetch_window=WORK_FETCH_WINDOW,
            reconnects=signal_of(self.nc),
        )  # fmt: skip
        worker.start()
        LOG.info("agent.work_group", group=group.key, hosts=len(group.hosts))
        return worker

    async def _route(self, group: _Group, work: Work, msg: Msg) -> None:
        host = host_of(msg)
        member = group.members.get(host)
        if member is None and host in group.hosts:  # planned here, not started yet
            with contextlib.suppress(TimeoutError):
                await msg.in_progress()
                await asyncio.wait_for(group.arrival(host).wait(), JOIN_WAIT)
            member = group.members.get(host)
        if member is None:
            LOG.info("agent.work_waits_for_host", host=host, group=group.key)
            await msg.nak(delay=JOIN_RETRY)
            return
        await member.handle(work, msg)

    async def _exhausted(self, group: _Group, work: Work, msg: Msg, why: str) -> None:
        member = group.members.get(host_of(msg))
        if member is None:
            LOG.error("agent.gave_up_without_host", host=host_of(msg), server=work.server_id)
            return
        await member.give_up(work, msg, why)


async def _keep(js: Any, component: str, msg: Msg, deliveries: int, error: str) -> None:
    """A dead letter under the host's own name, as its own consumer would keep it."""
    await dead_letters.keep(js, f"agent-{host_of(msg)}", msg, deliveries, error)


_by_beats: weakref.WeakKeyDictionary[Heartbeats, WorkGroups] = weakref.WeakKeyDictionary()


def for_beats(nc: Client, cfg: Config, beats: Heartbeats) -> WorkGroups:
    """The work groups of the hosts planned in `beats` (one per process's fleet)."""
    groups = _by_beats.get(beats)
    if groups is None:
        groups = _by_beats[beats] = WorkGroups(nc, cfg, beats)
    return groups
