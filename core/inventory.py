"""The inventory index: an in-memory DuckDB copy of the hosts, fed by JetStream KV watches.

It is the read side, never the source of truth. Watches apply records to a Python map
at once and mark them dirty; the DuckDB table is brought up to date in one batch just
before a query, because a single-row write costs about as much as a whole batch.
Candidate queries return numpy columns for filters and weighers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import duckdb
import msgspec
import numpy as np
from nats.js.kv import KeyValue

from hvmesh.core import log
from hvmesh.core.models import Heartbeat, Host
from hvmesh.core.store import Bucket, Entry, Store

LOG = log.get_logger(__name__)

HOST_COLUMNS: list[tuple[str, str]] = [
    ("name", "VARCHAR PRIMARY KEY"),
    ("driver", "VARCHAR"),
    ("availability_zone", "VARCHAR"),
    ("enabled", "BOOLEAN"),
    ("heartbeat", "DOUBLE"),
    ("hypervisor_type", "VARCHAR"),
    ("vcpus", "BIGINT"),
    ("vcpus_used", "BIGINT"),
    ("vcpus_free", "BIGINT"),
    ("memory_mb", "BIGINT"),
    ("memory_mb_used", "BIGINT"),
    ("memory_mb_free", "BIGINT"),
    ("local_gb", "BIGINT"),
    ("local_gb_used", "BIGINT"),
    ("disk_gb_free", "BIGINT"),
    ("running_vms", "BIGINT"),
    ("revision", "BIGINT"),
]

_RC_COLUMNS = {"VCPU": "vcpus", "MEMORY_MB": "memory_mb", "DISK_GB": "local_gb"}
_FREE_COLUMNS = {"VCPU": "vcpus_free", "MEMORY_MB": "memory_mb_free", "DISK_GB": "disk_gb_free"}


def host_row(host: Host, heartbeat: float, revision: int) -> tuple[Any, ...]:
    """One `hosts` table row for a host record."""
    values: dict[str, Any] = {
        "name": host.name,
        "driver": host.driver,
        "availability_zone": host.availability_zone,
        "enabled": host.status == "enabled",
        "heartbeat": heartbeat,
        "hypervisor_type": host.hypervisor_type,
        "running_vms": len(host.allocations),
        "revision": revision,
    }
    for rc, col in _RC_COLUMNS.items():
        inv = host.inventories.get(rc)
        used = host.used(rc)
        values[col] = inv.total if inv else 0
        values[f"{col}_used"] = used
        values[_FREE_COLUMNS[rc]] = (inv.capacity() - used) if inv else 0
    return tuple(values[c] for c, _ in HOST_COLUMNS)


class Index:
    """Hosts as a DuckDB table plus their latest records, kept current by KV watches."""

    def __init__(self, service_down_time: float = 60.0) -> None:
        self.service_down_time = service_down_time
        self.db = duckdb.connect(":memory:", config={"enable_external_access": False})
        cols = ", ".join(f"{n} {t}" for n, t in HOST_COLUMNS)
        self.db.execute(f"CREATE TABLE hosts ({cols})")
        self.hosts: dict[str, Entry[Host]] = {}
        self.heartbeats: dict[str, float] = {}
        self.consumers: dict[str, str] = {}  # server id -> host holding its allocation
        self._dirty: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[KeyValue.KeyWatcher] = []
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
        else:
            self.hosts[name] = entry
            for sid in entry.value.allocations:
                self.consumers[sid] = name
        self._dirty.add(name)

    def apply_heartbeat(self, hb: Heartbeat) -> None:
        if hb.at > self.heartbeats.get(hb.host, 0.0):
            self.heartbeats[hb.host] = hb.at
            self._dirty.add(hb.host)

    async def start(self, store: Store) -> None:
        """Watch the hosts and heartbeats buckets; returns once the snapshot is loaded."""
        hosts_loaded = asyncio.Event()
        beats_loaded = asyncio.Event()
        self._tasks.append(
            asyncio.create_task(self._watch(store.hosts, self._on_host, hosts_loaded))
        )
        self._tasks.append(
            asyncio.create_task(self._watch(store.heartbeats, self._on_heartbeat, beats_loaded))
        )
        await asyncio.gather(hosts_loaded.wait(), beats_loaded.wait())
        self.flush()
        self.ready.set()

    def _on_host(self, bucket: Bucket[Host], key: str, value: bytes | None, revision: int) -> None:
        entry = Entry(key=key, value=bucket.decode(value), revision=revision) if value else None
        self.apply_host(entry, key, revision)

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

    # --- querying --------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every host changed since the last flush into DuckDB, in one batch."""
        if not self._dirty:
            return
        names = list(self._dirty)
        self._dirty.clear()
        rows = [
            host_row(e.value, self.heartbeats.get(n, 0.0), e.revision)
            for n in names
            if (e := self.hosts.get(n)) is not None
        ]
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM hosts WHERE list_contains(?, name)", [names])
            if rows:
                marks = ", ".join("?" for _ in HOST_COLUMNS)
                self.db.executemany(f"INSERT INTO hosts VALUES ({marks})", rows)
            self.db.execute("COMMIT")
        except Exception:
            self.db.execute("ROLLBACK")
            self._dirty.update(names)
            raise

    def candidates(
        self, where: list[str], params: list[Any], exclude: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Columns of the hosts passing every SQL predicate, plus a computed `up`."""
        self.flush()
        clauses = list(where)
        args = list(params)
        if exclude:
            clauses.append("NOT list_contains(?, name)")
            args.append(list(exclude))
        sql = "SELECT * FROM hosts"
        if clauses:
            sql += " WHERE " + " AND ".join(f"({c})" for c in clauses)
        cols = self.db.execute(sql, args).fetchnumpy()
        out = {k: np.asarray(v) for k, v in cols.items()}
        out["up"] = out["heartbeat"] >= time.time() - self.service_down_time
        return out

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run read-only SQL over the index; returns (column names, rows)."""
        self.flush()
        cur = self.db.execute(sql, params or [])
        names = [d[0] for d in cur.description or []]
        return names, cur.fetchall()

    def is_up(self, host: str) -> bool:
        return self.heartbeats.get(host, 0.0) >= time.time() - self.service_down_time
