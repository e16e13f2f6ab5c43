"""The heartbeats of one agent process's hosts: one record per group of hosts, one loop for all.

A process running thousands of hosts (a fake fleet, a vCenter cluster, a bare-metal
service's nodes) would otherwise write one record per host per interval: at 10,000 hosts
and 10 s, a thousand fsynced writes a second that say nothing new. Here the hosts a
process runs are split, in the order it lists them, into groups of GROUP_SIZE; each group
is one heartbeat record keyed by its first host (a name the host's own credentials may
write), listing the hosts that beat and, under `stale`, when the others last did. One
loop writes every group each interval. A host that starts asks for its group's write and
waits for it, so it is up as soon as it has started; asks that arrive while a write is
under way are answered together by the next one. Readers: core/state/liveness.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Protocol

from hvmesh.core import log
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Heartbeat
from hvmesh.core.state.store import Bucket

LOG = log.get_logger(__name__)

GROUP_SIZE = 1000  # hosts per heartbeat record: ~15 KB of names


class Beating(Protocol):
    """What a member of a group offers: its host's name and whether it can beat now."""

    host: str

    def healthy(self) -> bool: ...


class Heartbeats:
    """The heartbeat groups of one process's hosts and the loop that writes them."""

    def __init__(self, interval: float, group_size: int = GROUP_SIZE) -> None:
        self.interval = interval
        self.group_size = group_size
        self.agent_id = uuid.uuid4().hex[:12]
        self.bucket: Bucket[Heartbeat] | None = None
        self._keys: dict[str, str] = {}  # host -> its group's key
        self._planned_in: dict[str, list[str]] = {}  # key -> the hosts of its group
        self._planned: list[str] = []
        self._members: dict[str, dict[str, Beating]] = {}  # key -> host -> member
        self._last: dict[str, dict[str, float]] = {}  # key -> host -> its last beat written
        self._asked: dict[str, int] = {}  # key -> writes asked for
        self._done: dict[str, int] = {}  # key -> asks the last finished write answered
        self._locks: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.Task[None] | None = None

    def plan(self, hosts: Sequence[str]) -> None:
        """Put `hosts` (those not yet placed) into groups, in this order.

        The same hosts listed in the same order get the same keys in every run, so a
        restarted process overwrites its old records instead of leaving them behind.
        """
        for host in hosts:
            if host in self._keys:
                continue
            position = len(self._planned)
            self._planned.append(host)
            key = self._keys[host] = self._planned[position - position % self.group_size]
            self._planned_in.setdefault(key, []).append(host)

    def key_of(self, host: str) -> str:
        """The key of the record that speaks for `host` (its own name if never planned)."""
        return self._keys.get(host, host)

    def group_of(self, host: str) -> list[str]:
        """The hosts planned in `host`'s group, in order (the host alone if never planned)."""
        return self._planned_in.get(self.key_of(host), [host])

    async def join(self, member: Beating, bucket: Bucket[Heartbeat]) -> None:
        """Count `member` in from now on; returns once a record says it is up."""
        self.bucket = self.bucket or bucket
        key = self.key_of(member.host)
        self._members.setdefault(key, {})[member.host] = member
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._beat_loop())
        await self.beat(key)

    async def leave(self, member: Beating) -> None:
        """Stop counting `member`; its last beat ages from here as the host's would."""
        key = self.key_of(member.host)
        group = self._members.get(key, {})
        if group.get(member.host) is member:
            del group[member.host]
        if not group:
            self._members.pop(key, None)
        if not self._members and self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def beat(self, key: str) -> None:
        """Write group `key`'s record, or wait for a write that starts after this call."""
        asked = self._asked[key] = self._asked.get(key, 0) + 1
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self._done.get(key, 0) >= asked:
                return  # a write that began after the ask has landed
            covers = self._asked[key]
            await self._write(key)
            self._done[key] = covers

    async def _write(self, key: str) -> None:
        group = self._members.get(key)
        if not group or self.bucket is None:
            return
        at = now()
        up = []
        for host, member in group.items():
            if member.healthy():
                up.append(host)
            else:
                LOG.warning("agent.hypervisor_unreachable", host=host)
        if not up:
            return  # nothing new to say: the last record stands and ages
        last = self._last.setdefault(key, {})
        beating = set(up)
        stale = {host: t for host, t in last.items() if host not in beating}
        record = Heartbeat(host=key, at=at, agent_id=self.agent_id, hosts=up, stale=stale)
        await self.bucket.put(key, record)
        last.update(dict.fromkeys(up, at))

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            keys = list(self._members)
            for key, outcome in zip(
                keys,
                await asyncio.gather(*(self.beat(k) for k in keys), return_exceptions=True),
                strict=True,
            ):
                if isinstance(outcome, Exception):
                    LOG.error("agent.heartbeat_failed", key=key, error=str(outcome))
