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
import gc
import math
import time
from typing import Any

import duckdb
import msgspec
import numpy as np
from nats.js.kv import KeyValue

from hvmesh.core import log
from hvmesh.core.protocol.models import Aggregate, Heartbeat, Host
from hvmesh.core.state.store import Bucket, Entry, Store

LOG = log.get_logger(__name__)

# Column name -> numpy dtype. `object` columns hold Python strings.
HOST_COLUMNS: dict[str, Any] = {
    "name": object,
    "driver": object,
    "availability_zone": object,
    "hypervisor_type": object,
    "cpu_arch": object,
    "az_code": np.int32,
    "enabled": np.bool_,
    "present": np.bool_,
    "heartbeat": np.float64,
    "vcpus": np.int64,
    "vcpus_used": np.int64,
    "vcpus_free": np.int64,
    "memory_mb": np.int64,
    "memory_mb_used": np.int64,
    "memory_mb_free": np.int64,
    "local_gb": np.int64,
    "local_gb_used": np.int64,
    "disk_gb_free": np.int64,
    "running_vms": np.int64,
    "failed_builds": np.int64,
    "io_ops": np.int64,
    "revision": np.int64,
}

_RESOURCE_COLUMNS = {
    "VCPU": ("vcpus", "vcpus_used", "vcpus_free"),
    "MEMORY_MB": ("memory_mb", "memory_mb_used", "memory_mb_free"),
    "DISK_GB": ("local_gb", "local_gb_used", "disk_gb_free"),
}

# Columns DuckDB sees as the `hosts` table (the codes and row bookkeeping stay hidden).
SQL_COLUMNS = [c for c in HOST_COLUMNS if c not in ("az_code", "present")]

# Changed-row journal entries kept; past this the older half is dropped, and a reader
# that had not caught up with it starts over from the full columns.
JOURNAL_LIMIT = 1 << 16
_NO_ROWS = np.zeros(0, dtype=np.int64)


def _empty(size: int, dtype: Any) -> np.ndarray:
    """A column of `size` rows: "" for strings (so masks can always call str methods), else 0."""
    if dtype is object or dtype == np.dtype(object):
        return np.full(size, "", dtype=object)
    return np.zeros(size, dtype=dtype)


class Codes:
    """Strings to small integers and back, for columns that filters compare."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}

    def of(self, text: str) -> int:
        code = self.code.get(text)
        if code is None:
            code = self.code[text] = len(self.code)
        return code

    def lookup(self, text: str) -> int:
        """The code of `text`, or -1 when no host has it."""
        return self.code.get(text, -1)


class HostColumns:
    """One row per host ever seen; a removed host's row is kept with present=False."""

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self.row: dict[str, int] = {}
        self.zones = Codes()
        self.arrays = {c: _empty(capacity, t) for c, t in HOST_COLUMNS.items()}
        # Traits are sets per host; filters ask "which rows have trait T", so keep both
        # directions, and a mask per trait rebuilt only when its membership changed.
        # Free amounts of custom resource classes (PCI devices, ...), one column each,
        # made when a class is first seen; hosts without it have 0.
        self.custom_free: dict[str, np.ndarray] = {}
        self.row_traits: dict[int, frozenset[str]] = {}
        self.trait_rows: dict[str, set[int]] = {}
        self._trait_masks: dict[str, tuple[int, np.ndarray]] = {}
        self._trait_version: dict[str, int] = {}
        # Rows written, in order. `journal_start` is the position of journal[0] counted
        # from the first write ever, so positions stay valid when the front is dropped.
        self.journal: list[int] = []
        self.journal_start = 0

    @property
    def journal_end(self) -> int:
        """The position the next journal entry will have."""
        return self.journal_start + len(self.journal)

    def touch(self, row: int) -> None:
        """Record that `row` changed."""
        self.journal.append(row)
        if len(self.journal) > JOURNAL_LIMIT:
            half = len(self.journal) // 2
            del self.journal[:half]
            self.journal_start += half

    def changed_since(self, position: int) -> np.ndarray | None:
        """Rows changed since journal `position`, ascending and unique; None if forgotten."""
        if position < self.journal_start:
            return None
        if position >= self.journal_end:
            return _NO_ROWS
        # A decision usually finds a handful: set and sort beat np.unique at that size.
        rows = sorted(set(self.journal[position - self.journal_start :]))
        return np.array(rows, dtype=np.int64)

    def _row_for(self, name: str) -> int:
        row = self.row.get(name)
        if row is not None:
            return row
        if self.size == len(self.arrays["name"]):
            for c, a in self.arrays.items():
                grown = _empty(len(a) * 2, a.dtype)
                grown[: len(a)] = a
                self.arrays[c] = grown
            for rc, a in self.custom_free.items():
                grown = np.zeros(len(a) * 2, dtype=a.dtype)
                grown[: len(a)] = a
                self.custom_free[rc] = grown
        row = self.row[name] = self.size
        self.size += 1
        return row

    def put(self, host: Host, revision: int, zone: str) -> None:
        """Write a host's row; `zone` is its effective availability zone."""
        i = self._row_for(host.name)  # may grow the arrays: look the columns up after
        self.touch(i)
        a = self.arrays
        a["name"][i] = host.name
        a["driver"][i] = host.driver
        self.set_zone(i, zone)
        a["hypervisor_type"][i] = host.hypervisor_type
        a["cpu_arch"][i] = host.cpu_arch
        a["enabled"][i] = host.status == "enabled"
        traits = set(host.traits)
        if host.status != "enabled":
            traits.add("COMPUTE_STATUS_DISABLED")
        self._set_traits(i, frozenset(traits))
        a["present"][i] = True
        a["running_vms"][i] = len(host.allocations)
        a["failed_builds"][i] = host.failed_builds
        a["io_ops"][i] = len(host.in_progress)
        a["revision"][i] = revision
        used = {rc: 0 for rc in _RESOURCE_COLUMNS}
        for alloc in host.allocations.values():
            for rc, amount in alloc.items():
                if rc in used:
                    used[rc] += amount
        for rc, (total_c, used_c, free_c) in _RESOURCE_COLUMNS.items():
            inv = host.inventories.get(rc)
            a[total_c][i] = inv.total if inv else 0
            a[used_c][i] = used[rc]
            a[free_c][i] = (inv.capacity() - used[rc]) if inv else 0
        for rc in host.inventories.keys() - _RESOURCE_COLUMNS.keys():
            if rc not in self.custom_free:
                self.custom_free[rc] = np.zeros(len(a["name"]), dtype=np.int64)
        for rc, column in self.custom_free.items():
            inv = host.inventories.get(rc)
            column[i] = (inv.capacity() - host.used(rc)) if inv else 0

    def set_zone(self, row: int, zone: str) -> None:
        self.touch(row)
        self.arrays["availability_zone"][row] = zone
        self.arrays["az_code"][row] = self.zones.of(zone)

    def _set_traits(self, row: int, traits: frozenset[str]) -> None:
        old = self.row_traits.get(row, frozenset())
        if old == traits:
            return
        for t in old - traits:
            self.trait_rows[t].discard(row)
            self._trait_version[t] = self._trait_version.get(t, 0) + 1
        for t in traits - old:
            self.trait_rows.setdefault(t, set()).add(row)
            self._trait_version[t] = self._trait_version.get(t, 0) + 1
        self.row_traits[row] = traits

    def has_trait(self, trait: str) -> np.ndarray:
        """A mask over the rows: which hosts have `trait`."""
        version = self._trait_version.get(trait, 0)
        cached = self._trait_masks.get(trait)
        if cached is not None and cached[0] == version and len(cached[1]) == self.size:
            return cached[1]
        mask = np.zeros(self.size, dtype=bool)
        rows = self.trait_rows.get(trait)
        if rows:
            mask[np.fromiter(rows, dtype=np.int64, count=len(rows))] = True
        self._trait_masks[trait] = (version, mask)
        return mask

    def remove(self, name: str) -> None:
        row = self.row.get(name)
        if row is not None:
            self.touch(row)
            self.arrays["present"][row] = False

    def beat(self, name: str, at: float, fresh_since: float = math.inf) -> None:
        """Take a heartbeat. A host whose last one is not older than `fresh_since` was up
        and stays up, so nothing a filter sees changed: its row is not journaled (most
        heartbeats, at thousands a second in a large fleet, are of this kind)."""
        known = name in self.row
        row = self._row_for(name)  # may grow the arrays: look the column up after
        column = self.arrays["heartbeat"]
        if not known or column[row] < fresh_since:
            self.touch(row)
        column[row] = at

    def view(self) -> dict[str, np.ndarray]:
        """Every column up to the last used row (views: no copy)."""
        return {c: a[: self.size] for c, a in self.arrays.items()}


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

    def apply_heartbeat(self, hb: Heartbeat) -> None:
        if hb.at > self.heartbeats.get(hb.host, 0.0):
            self.heartbeats[hb.host] = hb.at
            self.columns.beat(hb.host, hb.at, fresh_since=time.time() - self.service_down_time)

    async def start(self, store: Store) -> None:
        """Watch the aggregates, hosts and heartbeats buckets; returns once all are loaded."""
        loaded = []
        for bucket, apply in (
            (store.aggregates, self._on_aggregate),
            (store.hosts, self._on_host),
            (store.heartbeats, self._on_heartbeat),
        ):
            event = asyncio.Event()
            loaded.append(event.wait())
            self._tasks.append(asyncio.create_task(self._watch(bucket, apply, event)))
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
            self.apply_heartbeat(bucket.decode(value))

    async def _watch(self, bucket: Bucket[Any], apply: Any, loaded: asyncio.Event) -> None:
        while True:
            try:
                watcher = await bucket.kv.watchall()
                self._watchers.append(watcher)
                async for e in watcher:
                    if e is None:
                        loaded.set()
                        continue
                    try:
                        apply(bucket, e.key, e.value if e.operation is None else None, e.revision)
                    except msgspec.DecodeError:
                        LOG.warning("index.bad_record", bucket=bucket.kv._name, key=e.key)
                    self._notify()
                    if e.delta == 0:
                        loaded.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("index.watch_failed", bucket=bucket.kv._name)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
