"""The inventory index: hosts as numpy columns, fed by JetStream KV watches, queried by DuckDB.

It is the read side, never the source of truth. Each host record a watch delivers is
written into its row of the columns at once (a few array stores), so the index is
always current and there is nothing to flush. Filters and weighers read the columns
directly (the fast path); SQL predicates and operators' queries run in DuckDB over
the same arrays, registered without copying. Strings that filters compare, like the
availability zone, are kept as integer codes so a mask over 100,000 hosts stays cheap.

Every write that can change what a filter or weigher sees of a host appends its row to
a journal, so a scheduler that kept results between decisions (schedulers/score_cache.py)
can redo just the rows changed since it last looked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from typing import Any

import duckdb
import numpy as np
from nats.js.kv import KeyValue

from hvmesh.core import log
from hvmesh.core.protocol.records import Aggregate, Heartbeat, Host
from hvmesh.core.state import bucket_watch
from hvmesh.core.state.host_columns import SQL_COLUMNS, HostColumns
from hvmesh.core.state.store import Bucket, Entry, Store
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)


class CandidateColumns(dict):
    """The columns filters and weighers read, and what they compare against.

    Besides the arrays (see HOST_COLUMNS, plus `up`), filters may ask for a zone's
    code, a mask of the hosts with a trait, the host holding a server, and the
    deployment's configuration (`config`, set by the scheduler).
    """

    def __init__(self, columns: dict[str, np.ndarray], index: Index, now: float) -> None:
        super().__init__(columns)
        self._index = index
        self.now = now  # the time `up` is judged at
        self.config: Any = None

    def __missing__(self, key: str) -> np.ndarray:
        # Columns not handed in are cut from the index on first use (see candidate_columns).
        if key == "up":
            value = self.up_of(slice(None, self._index.columns.size))
        else:
            columns = self._index.columns
            value = columns.arrays[key][: columns.size]
        self[key] = value
        return value

    def up_of(self, rows: np.ndarray | slice) -> np.ndarray:
        """`up` of some rows only: heartbeat within service_down_time of `now`."""
        heartbeat = self._index.columns.arrays["heartbeat"][rows]
        return heartbeat >= self.now - self._index.service_down_time

    def zone_code(self, zone: str) -> int:
        return self._index.columns.zones.lookup(zone)

    def has_trait(self, trait: str) -> np.ndarray:
        return self._index.columns.has_trait(trait)

    def host_of(self, server_id: str) -> str | None:
        return self._index.consumers.get(server_id)

    def in_aggregates(self, wanted: Any) -> np.ndarray:
        """Mask of hosts in at least one aggregate for which `wanted(aggregate)` holds."""
        return self._index.aggregate_mask(wanted)

    def free(self, resource_class: str) -> np.ndarray:
        """Free amount of a custom resource class per host (zeros when no host has it)."""
        columns = self._index.columns
        column = columns.custom_free.get(resource_class)
        if column is None:
            return np.zeros(columns.size, dtype=np.int64)
        return column[: columns.size]

    def row_of(self, host: str) -> int | None:
        return self._index.columns.row.get(host)


class Index:
    """The hosts of a deployment, kept current by KV watches."""

    def __init__(self, service_down_time: float = 60.0) -> None:
        self.service_down_time = service_down_time
        self.columns = HostColumns()
        self.hosts: dict[str, Entry[Host]] = {}
        self._groups: dict[str, Heartbeat] = {}  # group heartbeat records, by key
        self.heartbeats: dict[str, float] = {}
        self.consumers: dict[str, str] = {}  # server id -> host holding its allocation
        self.aggregates: dict[str, Aggregate] = {}
        self.host_aggregates: dict[str, set[str]] = {}  # host -> aggregate ids
        # Bumped on every aggregate change: masks over aggregates are not per-row data.
        self.aggregates_version = 0
        # No file or network access, and no query can switch it back on.
        self.db = duckdb.connect(":memory:", config={"enable_external_access": False})
        self.db.execute("SET lock_configuration = true")
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[KeyValue.KeyWatcher] = []
        self._changed = asyncio.Event()
        self.ready = asyncio.Event()

    # --- feeding ---------------------------------------------------------------------------

    def apply_host(self, entry: Entry[Host] | None, name: str, revision: int) -> None:
        """Take a host record (None: deleted) unless we already hold a newer one."""
        current = self.hosts.get(name)
        if current is not None and current.revision >= revision:
            return
        if current is not None:
            for sid in current.value.allocations:
                if self.consumers.get(sid) == name:
                    del self.consumers[sid]
        if entry is None:
            self.hosts.pop(name, None)
            self.columns.remove(name)
            return
        self.hosts[name] = entry
        group = self._groups.get(entry.value.beat_key) if name not in self.heartbeats else None
        at = group.beats().get(name) if group is not None else None
        if group is not None and at is not None:
            # Its group's record came first and could not speak for it yet: now it can.
            self.apply_heartbeat(Heartbeat(host=name, at=at, agent_id=group.agent_id), name)
        for sid in entry.value.allocations:
            # A server seen on another host first: that host's answer to host_of
            # changes too (same_host/different_host), so its row counts as changed.
            previous = self.consumers.get(sid)
            if previous is not None and previous != name:
                row = self.columns.row.get(previous)
                if row is not None:
                    self.columns.touch(row)
            self.consumers[sid] = name
        self.columns.put(entry.value, revision, self.zone_of(name))

    def zone_of(self, host: str) -> str:
        """A host's availability zone: its aggregate's, if one names a zone, else its own."""
        for agg_id in sorted(self.host_aggregates.get(host, ())):
            zone = self.aggregates[agg_id].availability_zone
            if zone:
                return zone
        entry = self.hosts.get(host)
        return entry.value.availability_zone if entry else ""

    def apply_aggregate(self, agg_id: str, aggregate: Aggregate | None) -> None:
        """Take an aggregate (None: deleted) and re-zone the hosts it gained or lost."""
        old = self.aggregates.pop(agg_id, None)
        self.aggregates_version += 1
        touched = set(old.hosts) if old else set()
        if aggregate is not None:
            self.aggregates[agg_id] = aggregate
            touched |= set(aggregate.hosts)
        for host in touched:
            member = aggregate is not None and host in aggregate.hosts
            ids = self.host_aggregates.setdefault(host, set())
            (ids.add if member else ids.discard)(agg_id)
            row = self.columns.row.get(host)
            if row is not None and host in self.hosts:
                self.columns.set_zone(row, self.zone_of(host))

    def aggregate_mask(self, wanted: Any) -> np.ndarray:
        """Rows of hosts in at least one aggregate for which `wanted(aggregate)` holds."""
        mask = np.zeros(self.columns.size, dtype=bool)
        for aggregate in self.aggregates.values():
            if wanted(aggregate):
                for host in aggregate.hosts:
                    row = self.columns.row.get(host)
                    if row is not None:
                        mask[row] = True
        return mask

    def apply_heartbeat(self, hb: Heartbeat, key: str | None = None) -> None:
        """Take a heartbeat record: one host's, or a group's (core/state/liveness.py).

        With `key`, the record's own (as the watch gives it), it counts only for the
        hosts that name that key: the key's own host, and those whose host record's
        beat_key it is. An agent may write only its own hosts' keys and records, so it
        cannot make another's host look up by listing it.
        """
        fresh_since = time.time() - self.service_down_time
        if key is not None and hb.hosts is not None:
            self._groups[key] = hb  # for its hosts whose records come after it

        def vouched(host: str) -> bool:
            return key is None or self._vouched(key, host)

        if hb.hosts:  # a group's: the hosts that beat share one time
            last = self.heartbeats.get
            newer = [h for h in hb.hosts if hb.at > last(h, 0.0) and vouched(h)]
            self.heartbeats.update(dict.fromkeys(newer, hb.at))
            self.columns.beat_many(newer, hb.at, fresh_since=fresh_since)
        for host, at in (hb.stale if hb.hosts is not None else {hb.host: hb.at}).items():
            if at > self.heartbeats.get(host, 0.0) and vouched(host):
                self.heartbeats[host] = at
                self.columns.beat(host, at, fresh_since=fresh_since)

    def _vouched(self, key: str, host: str) -> bool:
        """Whether the heartbeat record at `key` may speak for `host`."""
        if host == key:
            return True
        entry = self.hosts.get(host)
        return entry is not None and entry.value.beat_key == key

    async def start(self, store: Store) -> None:
        """Watch the aggregates, hosts and heartbeats buckets; returns once all are loaded."""
        loaded = []
        watched: list[tuple[Bucket[Any], Any]] = [
            (store.aggregates, self._on_aggregate),
            (store.hosts, self._on_host),
            (store.heartbeats, self._on_heartbeat),
        ]
        for bucket, apply in watched:
            event = asyncio.Event()
            loaded.append(event.wait())
            take = functools.partial(apply, bucket)
            watch = bucket_watch.watch(bucket, take, event, self._watchers, self._notify, "index")
            self._tasks.append(asyncio.create_task(watch))
        await asyncio.gather(*loaded)
        # What was just loaded lives as long as the process: keep the cycle collector
        # from walking it in every full collection. Such a pass took ~50 ms at 10,000
        # hosts and ~150 ms at 100,000, stalling every decision in flight; records that
        # later replace these are still collected as usual.
        gc.freeze()
        self.ready.set()

    def _notify(self) -> None:
        """Wake whoever waits in wait_for: something was applied."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, check: Any, timeout: float = 10.0) -> None:
        """Wait until `check()` holds, re-checking after each record the watches apply."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                if check():
                    return
                await changed.wait()

    def _on_host(self, bucket: Bucket[Host], key: str, value: bytes | None, revision: int) -> None:
        current = self.hosts.get(key)
        if current is not None and current.revision >= revision:
            return  # mostly a scheduler's own claim coming back: no need to decode it
        entry = Entry(key=key, value=bucket.decode(value), revision=revision) if value else None
        self.apply_host(entry, key, revision)

    def _on_aggregate(
        self, bucket: Bucket[Aggregate], key: str, value: bytes | None, revision: int
    ) -> None:
        self.apply_aggregate(key, bucket.decode(value) if value else None)

    def _on_heartbeat(
        self, bucket: Bucket[Heartbeat], key: str, value: bytes | None, revision: int
    ) -> None:
        if value:
            self.apply_heartbeat(bucket.decode(value), key)

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()
        self.db.close()
        # Let the collector see what start() froze again, so that exit tears it down
        # in order (DuckDB's bindings complain of leaks otherwise).
        gc.unfreeze()

    # --- querying --------------------------------------------------------------------------

    def candidate_columns(self, now: float | None = None, lazy: bool = False) -> CandidateColumns:
        """Every column (as views) plus `up`, judged at `now` (default: the current time).

        Rows with present=False are still there. `lazy` hands out a dict that cuts each
        column on first use, for a caller that reads a few columns of a few rows (it
        then takes `up_of(rows)` rather than the whole of `up`).
        """
        at = time.time() if now is None else now
        if lazy:
            return CandidateColumns({}, self, at)
        cols = self.columns.view()
        cols["up"] = cols["heartbeat"] >= at - self.service_down_time
        return CandidateColumns(cols, self, at)

    def hosts_table(self) -> dict[str, np.ndarray]:
        """The `hosts` table DuckDB sees: present hosts, with `up` and their `row`."""
        cols = self.columns.view()
        present = cols["present"]
        table = {c: cols[c] for c in SQL_COLUMNS}
        table["up"] = cols["heartbeat"] >= time.time() - self.service_down_time
        table["row"] = np.arange(self.columns.size)
        if not present.all():
            table = {c: a[present] for c, a in table.items()}
        return table

    def allocations_table(self) -> dict[str, np.ndarray]:
        """The `allocations` table: one row per server and host it holds resources on."""
        rows = [
            (sid, name, a.get("VCPU", 0), a.get("MEMORY_MB", 0), a.get("DISK_GB", 0))
            for name, e in self.hosts.items()
            for sid, a in e.value.allocations.items()
        ]
        names = ("server_id", "host", "vcpus", "memory_mb", "disk_gb")
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        kinds = (object, object, np.int64, np.int64, np.int64)
        return {n: np.array(c, dtype=k) for n, c, k in zip(names, columns, kinds, strict=True)}

    def _register(self) -> None:
        self.db.register("hosts", self.hosts_table())

    def sql_mask(self, where: list[str], params: list[Any]) -> np.ndarray:
        """Rows of the columns matching every SQL predicate, as a boolean mask."""
        self._register()
        sql = "SELECT row FROM hosts WHERE " + " AND ".join(f"({c})" for c in where)
        rows = self.db.execute(sql, params).fetchnumpy()["row"]
        mask = np.zeros(self.columns.size, dtype=bool)
        mask[np.asarray(rows, dtype=np.int64)] = True
        return mask

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run read-only SQL over the `hosts` table; returns (column names, rows)."""
        self._register()
        cur = self.db.execute(sql, params or [])
        names = [d[0] for d in cur.description or []]
        return names, cur.fetchall()

    def is_up(self, host: str) -> bool:
        return self.heartbeats.get(host, 0.0) >= time.time() - self.service_down_time
