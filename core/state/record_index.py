"""A bucket's records in memory, each group of them in order, kept current by a KV watch.

The API's list endpoints read from such an index, never the bucket per call. Every
record has a place in the order: its sort key, whose last element is the record's key
in the bucket (so places are unique). Records may belong to groups (a project; a
project and user; "shared"): a listing walks the lists of the groups it may see,
merged, instead of every record and a filter. A page's start (its marker) is found by
a binary search, and a page reads only the records it returns (plus those its filters
skip).

Records deleted while the index runs leave their place behind for a while (the newest
`tombstones` of them), so a walk whose marker was deleted between two pages goes on
where it was instead of failing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import msgspec
from nats.js.kv import KeyValue

from hvmesh.core import log
from hvmesh.core.state import bucket_watch
from hvmesh.core.state.store import Bucket, Entry
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

T = TypeVar("T", bound=msgspec.Struct)
SortKey = tuple[Any, ...]
Groups = tuple[Hashable, ...]

TOMBSTONES = 100_000  # deleted records whose place a marker may still name
CATCH_UP = 2.0  # seconds a listing waits for the watch to reach the bucket's last write


def no_groups(record: Any) -> Groups:
    return ()


class RecordIndex(Generic[T]):
    """The records of one bucket, ordered by `order(record)` (ending with the record's
    key), in one list for all and one per group of `groups(record)`.

    A marker names a record by its key, or, with `ident`, by `ident(record)` within a
    group (keypairs: a name, unique per project and user).
    """

    def __init__(
        self,
        name: str,
        order: Callable[[T], SortKey],
        groups: Callable[[T], Groups] = no_groups,
        ident: Callable[[T], str] | None = None,
        tombstones: int = TOMBSTONES,
    ) -> None:
        self.name = name  # the log events' prefix
        self.records: dict[str, Entry[T]] = {}
        self.revision = 0  # the newest stream sequence applied
        self._order = order
        self._groups = groups
        self._ident = ident
        self._all: list[SortKey] = []
        self._lists: dict[Hashable, list[SortKey]] = {}
        self._named: dict[Hashable, str] = {}  # (group, ident) -> key, with `ident`
        self._gone: OrderedDict[Hashable, tuple[Groups, SortKey]] = OrderedDict()
        self._tombstones = tombstones
        self._placed = False  # whether the lists hold the records yet
        self._bucket: Bucket[T] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[KeyValue.KeyWatcher] = []
        self._changed = asyncio.Event()
        self.ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self.records)

    # --- feeding ---------------------------------------------------------------------------

    def apply(
        self, key: str, record: T | None, revision: int, own: bool = True, force: bool = False
    ) -> None:
        """Take a record (None: deleted) unless a newer one is held already (with `force`:
        whatever is held). A record not from the bucket (`own` False: another source,
        such as a site's servers at the core) has revisions of its own source, which the
        index's catch-up with its bucket does not count."""
        if own:
            self.revision = max(self.revision, revision)
        current = self.records.get(key)
        if current is not None and current.revision >= revision and not force:
            return
        if not self._placed:  # loading: ordered once everything is in (place_all)
            if record is None:
                self.records.pop(key, None)
            else:
                self.records[key] = Entry(key=key, value=record, revision=revision)
            return
        if current is not None:
            if record is not None and self._same_place(current.value, record):
                self.records[key] = Entry(key=key, value=record, revision=revision)
                return
            self._unplace(key, current.value)
        if record is None:
            if current is not None:
                self._bury(key, current.value)
            self.records.pop(key, None)
            return
        for handle in self._handles(key, record):
            self._gone.pop(handle, None)
        self.records[key] = Entry(key=key, value=record, revision=revision)
        self._place(key, record)

    def place_all(self) -> None:
        """Order every record held: once, when the first load is in (sorting n keys at
        once, instead of n inserts into growing lists)."""
        self._all = sorted(self._order(e.value) for e in self.records.values())
        self._lists = {}
        self._named = {}
        for place in self._all:
            record = self.records[place[-1]].value
            for group in self._groups(record):
                self._lists.setdefault(group, []).append(place)
            if self._ident is not None:
                for handle in self._handles(place[-1], record):
                    self._named[handle] = place[-1]
        self._placed = True

    def _same_place(self, old: T, new: T) -> bool:
        if self._order(old) != self._order(new) or self._groups(old) != self._groups(new):
            return False
        return self._ident is None or self._ident(old) == self._ident(new)

    def _handles(self, key: str, record: T) -> list[Hashable]:
        """What a marker naming this record is looked up by."""
        if self._ident is None:
            return [key]
        name = self._ident(record)
        return [(group, name) for group in self._groups(record)]

    def _place(self, key: str, record: T) -> None:
        place = self._order(record)
        bisect.insort(self._all, place)
        for group in self._groups(record):
            bisect.insort(self._lists.setdefault(group, []), place)
        if self._ident is not None:
            for handle in self._handles(key, record):
                self._named[handle] = key

    def _unplace(self, key: str, record: T) -> None:
        place = self._order(record)
        _remove(self._all, place)
        for group in self._groups(record):
            keys = self._lists.get(group)
            if keys is not None:
                _remove(keys, place)
                if not keys:
                    del self._lists[group]
        if self._ident is not None:
            for handle in self._handles(key, record):
                if self._named.get(handle) == key:
                    del self._named[handle]

    def _bury(self, key: str, record: T) -> None:
        for handle in self._handles(key, record):
            self._gone[handle] = (self._groups(record), self._order(record))
        while len(self._gone) > self._tombstones:
            self._gone.popitem(last=False)

    async def start(self, bucket: Bucket[T]) -> None:
        """Watch the bucket; returns once every record in it is loaded."""
        self._bucket = bucket

        def take(key: str, value: bytes | None, revision: int) -> None:
            self.apply(key, bucket.decode(value) if value else None, revision)

        loaded = asyncio.Event()
        self._tasks.append(
            asyncio.create_task(
                bucket_watch.watch(bucket, take, loaded, self._watchers, self._notify, self.name)
            )
        )
        await loaded.wait()
        self.place_all()
        self.ready.set()
        LOG.info(f"{self.name}.loaded", records=len(self.records))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def catch_up(self, timeout: float = CATCH_UP) -> None:
        """Wait until the watch has applied every write the bucket held when this was called.

        A listing made right after a write (by this API process or another) then shows
        it. Bounded: after `timeout` the index answers with what it has.
        """
        if self._bucket is None:
            return
        kv = self._bucket.kv
        info = await kv._js.stream_info(kv._stream)
        target = info.state.last_seq or 0
        try:
            async with asyncio.timeout(timeout):
                while self.revision < target:
                    await self._changed.wait()
        except TimeoutError:
            LOG.warning(f"{self.name}.behind", applied=self.revision, last=target)

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()

    # --- querying --------------------------------------------------------------------------

    def locate(self, marker: str, scopes: Sequence[Hashable] | None) -> SortKey | None:
        """Where the record a marker names is (or was, if deleted lately) in the order;
        None when unknown or in none of `scopes` (None: every record)."""
        if self._ident is None:
            handles: list[Hashable] = [marker]
        else:
            handles = [(scope, marker) for scope in scopes or ()]
        for handle in handles:
            key = marker if self._ident is None else self._named.get(handle)
            entry = self.records.get(key) if key is not None else None
            if entry is not None and _sees(scopes, self._groups(entry.value)):
                return self._order(entry.value)
        for handle in handles:
            gone = self._gone.get(handle)
            if gone is not None and _sees(scopes, gone[0]):
                return gone[1]
        return None

    def iterate(
        self,
        scopes: Sequence[Hashable] | None,
        after: SortKey | None = None,
        reverse: bool = False,
    ) -> Iterator[T]:
        """Records of any of `scopes` (None: every record) in order, from just past `after`.

        Meant to be consumed without awaiting in between (the lists may change then).
        """
        if scopes is None:
            lists = [self._all]
        else:
            lists = [self._lists.get(scope, []) for scope in dict.fromkeys(scopes)]
        if len(lists) == 1:
            places = _from(lists[0], after, reverse)
        else:  # a record in several of the groups comes once
            merged = heapq.merge(*(_from(k, after, reverse) for k in lists), reverse=reverse)
            places = _distinct(merged)
        for place in places:
            yield self.records[place[-1]].value


def _sees(scopes: Sequence[Hashable] | None, groups: Groups) -> bool:
    return scopes is None or any(group in scopes for group in groups)


def _from(keys: list[SortKey], after: SortKey | None, reverse: bool) -> Iterator[SortKey]:
    """The places of one sorted list past `after`, read by index as the list stands."""
    if reverse:
        i = len(keys) - 1 if after is None else bisect.bisect_left(keys, after) - 1
        while i >= 0:
            yield keys[i]
            i -= 1
        return
    i = 0 if after is None else bisect.bisect_right(keys, after)
    while i < len(keys):
        yield keys[i]
        i += 1


def _distinct(places: Iterator[SortKey]) -> Iterator[SortKey]:
    last: SortKey | None = None
    for place in places:
        if place != last:
            yield place
        last = place


def _remove(keys: list[SortKey], key: SortKey) -> None:
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]
