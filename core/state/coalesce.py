"""Concurrent read-modify-writes of one hot record, from one process, made as one write.

A record many requests change at once (a project's quota usage: every create, delete and
resize in the project) costs, with each request reading and writing it on its own, a
read and a decode per try and a conflict for all but one writer each round. Here the
changes that arrive while a write is under way wait for it, then go together: one read,
each change applied in turn to what the previous ones made (so each sees the others, and
checks such as quota limits hold across them), one compare-and-set. A change that raises
fails alone; the others are written. Nobody is answered before the write that holds their
change has landed, so a crash loses no acknowledged change. Writers in other processes
still meet by compare-and-set: a conflict re-reads and applies the whole batch again.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from hvmesh.core.state.store import Bucket, CasConflict, Entry, conflict_pause

T = TypeVar("T", bound=msgspec.Struct)

Change = Callable[[T], T | None]

ATTEMPTS = 400  # compare-and-set tries of one batch


class _Waiting(Generic[T]):
    def __init__(
        self,
        change: Change[T],
        make: Callable[[], T] | None,
        future: asyncio.Future[Entry[T] | None],
    ) -> None:
        self.change = change
        self.make = make
        self.future = future


class Coalescer(Generic[T]):
    """Batches `mutate` calls on each key of `bucket` (see the module's docstring)."""

    def __init__(self, bucket: Bucket[T]) -> None:
        self.bucket = bucket
        self._queued: dict[str, list[_Waiting[T]]] = {}
        self._flushing: dict[str, asyncio.Task[None]] = {}

    async def mutate(
        self, key: str, change: Change[T], make: Callable[[], T] | None = None
    ) -> Entry[T] | None:
        """Apply `change` (the new record, or None for no change; it may raise) to the
        record at `key`, made by `make()` when missing (else None is returned and nothing
        written). Returns the record as written by the batch that held the change."""
        future: asyncio.Future[Entry[T] | None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(key, []).append(_Waiting(change, make, future))
        if key not in self._flushing:
            self._flushing[key] = asyncio.create_task(self._flush(key))
        return await future

    async def _flush(self, key: str) -> None:
        try:
            while batch := self._queued.pop(key, []):
                try:
                    await self._write(key, batch)
                except BaseException as exc:  # the read or write failed: each waiter hears
                    for w in batch:
                        if not w.future.done():
                            w.future.set_exception(
                                exc if isinstance(exc, Exception) else CasConflict(key)
                            )
                    if not isinstance(exc, Exception):
                        raise
        finally:
            del self._flushing[key]

    async def _write(self, key: str, batch: list[_Waiting[T]]) -> None:
        # A missing record is made when any change of the batch asks for one to be made,
        # and every change of the batch applies to it; otherwise none is written.
        make = next((w.make for w in batch if w.make is not None), None)
        for attempt in range(ATTEMPTS):
            entry = await self.bucket.get(key)
            current = entry.value if entry is not None else (make() if make else None)
            if current is None:
                for w in batch:
                    if not w.future.done():
                        w.future.set_result(None)
                return
            outcomes: list[BaseException | None] = []
            changed = False
            for w in batch:
                try:
                    new = w.change(msgspec.structs.replace(current))
                except Exception as exc:  # this change is refused; the others go on
                    outcomes.append(exc)
                    continue
                outcomes.append(None)
                if new is not None:
                    current, changed = new, True
            written = entry
            if changed:
                try:
                    if entry is None:
                        revision = await self.bucket.create(key, current)
                    else:
                        revision = await self.bucket.update(key, current, entry.revision)
                except CasConflict:
                    await asyncio.sleep(conflict_pause(attempt))  # another process wrote
                    continue
                written = Entry(key=key, value=current, revision=revision)
            for w, outcome in zip(batch, outcomes, strict=True):
                if w.future.done():
                    continue
                if outcome is None:
                    w.future.set_result(written)
                else:
                    w.future.set_exception(outcome)
            return
        raise CasConflict(f"{key}: gave up after {ATTEMPTS} conflicting writes")


_WRITERS: weakref.WeakKeyDictionary[Bucket[Any], Coalescer[Any]] = weakref.WeakKeyDictionary()


def for_bucket(bucket: Bucket[T]) -> Coalescer[T]:
    """This process's one Coalescer of `bucket` (made on first use)."""
    found = _WRITERS.get(bucket)
    if found is None:
        found = _WRITERS[bucket] = Coalescer(bucket)
    return found
