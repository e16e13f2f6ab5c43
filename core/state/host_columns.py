"""The hosts as numpy columns: one row per host ever seen, and a journal of changed rows.

A host record is written into its row at once (a few array stores). Strings filters
compare, like the availability zone, are kept as integer codes, and every write that can
change what a filter or weigher sees appends the row to a journal, so a scheduler that
kept results between decisions redoes only the rows changed since it last looked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hvmesh.core.protocol.records import Host

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

RESOURCE_COLUMNS = {
    "VCPU": ("vcpus", "vcpus_used", "vcpus_free"),
    "MEMORY_MB": ("memory_mb", "memory_mb_used", "memory_mb_free"),
    "DISK_GB": ("local_gb", "local_gb_used", "disk_gb_free"),
}

# Columns DuckDB sees as the `hosts` table (the codes and row bookkeeping stay hidden).
SQL_COLUMNS = [c for c in HOST_COLUMNS if c not in ("az_code", "present")]

# Changed-row journal entries kept; past this the older half is dropped, and a reader
# that had not caught up with it starts over from the full columns.
JOURNAL_LIMIT = 1 << 16
NO_ROWS = np.zeros(0, dtype=np.int64)


def empty_column(size: int, dtype: Any) -> np.ndarray:
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
        self.arrays = {c: empty_column(capacity, t) for c, t in HOST_COLUMNS.items()}
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
            return NO_ROWS
        # A decision usually finds a handful: set and sort beat np.unique at that size.
        rows = sorted(set(self.journal[position - self.journal_start :]))
        return np.array(rows, dtype=np.int64)

    def _row_for(self, name: str) -> int:
        row = self.row.get(name)
        if row is not None:
            return row
        if self.size == len(self.arrays["name"]):
            for c, a in self.arrays.items():
                grown = empty_column(len(a) * 2, a.dtype)
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
        used = {rc: 0 for rc in RESOURCE_COLUMNS}
        for alloc in host.allocations.values():
            for rc, amount in alloc.items():
                if rc in used:
                    used[rc] += amount
        for rc, (total_c, used_c, free_c) in RESOURCE_COLUMNS.items():
            inv = host.inventories.get(rc)
            a[total_c][i] = inv.total if inv else 0
            a[used_c][i] = used[rc]
            a[free_c][i] = (inv.capacity() - used[rc]) if inv else 0
        for rc in host.inventories.keys() - RESOURCE_COLUMNS.keys():
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

    def beat_many(self, names: list[str], at: float, fresh_since: float = math.inf) -> None:
        """Take one heartbeat time for many hosts (a group's record), as `beat` would."""
        rows = [self.row.get(name) for name in names]
        known = np.fromiter((r for r in rows if r is not None), dtype=np.int64)
        if len(known) < len(rows):
            for name, row in zip(names, rows, strict=True):
                if row is None:
                    self.beat(name, at, fresh_since)
        column = self.arrays["heartbeat"]
        for row in known[column[known] < fresh_since]:
            self.touch(int(row))
        column[known] = at

    def view(self) -> dict[str, np.ndarray]:
        """Every column up to the last used row (views: no copy)."""
        return {c: a[: self.size] for c, a in self.arrays.items()}
