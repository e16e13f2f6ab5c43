"""Work consumers no host reads any more: their waiting work moved to each host's queue now, then removed.

Which consumer on HVMESH_WORK a host reads follows the shape of its agent process: a
host alone reads its own (`agent-<host>` on hvmesh.work.<host>), one of many its group's
(`agents-<key>` on hvmesh.work.<key>.*), as its host record's `work_group` says
(agents/work_groups.py). When that changes (an upgrade from one consumer per host, a
fleet split or joined) the old consumer stays behind: nats-server keeps its state, and
work published to it before the change waits there for a reader that never comes.

Every conductor sweeps HVMESH_WORK once after it starts and every SWEEP_INTERVAL. A
consumer is stale when the record of its host (of a group's first host, for a group's)
names another group, and it is dealt with once it was stale at the sweep before too (so
no conductor still routes work to it from what it read of the record a moment ago;
routes are kept 30 s, core/conductor/work_route.py): its waiting items are published again on each item's host's
subject now (with a message id per original, so two conductors sweeping together, or a
sweep cut short and run again, add no second copy) and acknowledged, and the consumer is
removed once nothing waits on it. An item whose host has no record any more is kept as a
dead letter (`hvmesh manage tasks`). A consumer with items delivered and not yet
acknowledged (to an agent that died) is left for a later sweep, after their ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from hvmesh.core import log
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.records import Host
from hvmesh.core.state import dead_letters
from hvmesh.core.state.store import Store
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

SWEEP_INTERVAL = 600.0  # seconds between sweeps of one conductor
BATCH = 256  # items fetched at once from a stale consumer
FETCH_WAIT = 1.0  # seconds a fetch waits for items before the consumer counts as drained
PAGE = 256  # consumers per page of JetStream's consumer list


class Swept(msgspec.Struct):
    """What one sweep did."""

    removed: list[str] = msgspec.field(default_factory=list)  # consumers removed
    moved: int = 0  # items published again on their host's subject now
    kept: int = 0  # items for hosts with no record, kept as dead letters
    left: list[str] = msgspec.field(default_factory=list)  # stale, items still delivered
    stale: list[str] = msgspec.field(default_factory=list)  # every stale one seen: the next
    # sweep's `suspects`


async def consumers(js: Any) -> list[ConsumerInfo]:
    """Every consumer on HVMESH_WORK, page by page."""
    found: list[ConsumerInfo] = []
    while True:
        page = await js.consumers_info(subjects.WORK_STREAM, offset=len(found) or None)
        found.extend(page)
        if len(page) < PAGE:
            return found


def _owner(name: str) -> tuple[str, str] | None:
    """(host whose record decides, the work_group that record names while it is read)."""
    if name.startswith("agents-"):
        key = name.removeprefix("agents-")
        return key, key
    if name.startswith("agent-"):
        return name.removeprefix("agent-"), ""
    return None


async def is_stale(store: Store, name: str) -> bool:
    """Whether the record deciding consumer `name` names another group than it serves."""
    owner = _owner(name)
    if owner is None:
        return False
    host, group = owner
    entry = await store.hosts.get(host)
    return entry is not None and entry.value.work_group != group


async def sweep(js: Any, store: Store, suspects: set[str]) -> Swept:
    """Empty and remove every work consumer on HVMESH_WORK stale now and among `suspects`
    (the last sweep's `stale`); see the module's text."""
    swept = Swept()
    for info in await consumers(js):
        name = info.name
        if not await is_stale(store, name):
            continue
        swept.stale.append(name)
        if name not in suspects:
            continue
        if not await _drain(js, store, name, swept):
            continue
        info = await js.consumer_info(subjects.WORK_STREAM, name)
        if info.num_ack_pending or info.num_pending or not await is_stale(store, name):
            swept.left.append(name)
            continue
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(subjects.WORK_STREAM, name)
        swept.removed.append(name)
        LOG.info("conductor.work_consumer_removed", consumer=name)
    if swept.removed or swept.moved or swept.kept:
        LOG.info(
            "conductor.work_consumers_swept",
            removed=len(swept.removed),
            moved=swept.moved,
            kept=swept.kept,
            left=swept.left,
        )
    return swept


async def _drain(js: Any, store: Store, name: str, swept: Swept) -> bool:
    """Move every item waiting on consumer `name`; False if one belongs where it is."""
    sub = await js.pull_subscribe_bind(durable=name, stream=subjects.WORK_STREAM)
    hosts: dict[str, Host | None] = {}
    try:
        while True:
            try:
                msgs = await sub.fetch(BATCH, timeout=FETCH_WAIT)
            except TimeoutError:
                return True
            for msg in msgs:
                if not await _move(js, store, name, msg, hosts, swept):
                    for rest in msgs:
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    return False
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _move(
    js: Any, store: Store, name: str, msg: Msg, hosts: dict[str, Host | None], swept: Swept
) -> bool:
    host = msg.subject.rsplit(".", 1)[-1]
    if host not in hosts:
        entry = await store.hosts.get(host)
        hosts[host] = entry.value if entry is not None else None
    record = hosts[host]
    if record is None:
        error = f"work consumer {name} removed; host {host} has no record any more"
        await dead_letters.keep(js, name, msg, msg.metadata.num_delivered, error)
        await msg.ack_sync()
        swept.kept += 1
        return True
    now_on = subjects.work(host, record.work_group)
    if now_on == msg.subject:  # this host still reads here: the consumer is not stale
        return False
    headers = dict(msg.headers or {})
    headers["Nats-Msg-Id"] = f"moved.{name}.{msg.metadata.sequence.stream}"
    await js.publish(now_on, msg.data, headers=headers)
    await msg.ack_sync()
    swept.moved += 1
    return True


class WorkConsumerSweep:
    """A conductor's sweep of stale work consumers: once after start, then every interval."""

    def __init__(self, js: Any, store: Store, interval: float = SWEEP_INTERVAL) -> None:
        self.js = js
        self.store = store
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="conductor-work-consumer-sweep")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_tasks([task])

    async def _loop(self) -> None:
        suspects: set[str] = set()
        while True:
            try:
                suspects = set((await sweep(self.js, self.store, suspects)).stale)
            except Exception:
                LOG.exception("conductor.work_consumer_sweep_failed")
            await asyncio.sleep(self.interval)
