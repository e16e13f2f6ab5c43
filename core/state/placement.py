"""Claims: an allocation is added to or removed from one host record by compare-and-set.

A claim re-checks the fit against the authoritative record it read, then writes it back
with that record's revision. A concurrent writer makes the write fail, and the claim
reads again; so two claims can never together overfill a host. The same goes for any
other rule a claim is given as `check` (a filter's claim-time check: an instance count,
the servers a hint names), judged on the record the write is conditional on.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from hvmesh.core import log
from hvmesh.core.protocol.records import Host
from hvmesh.core.state.store import CasConflict, Entry, Store

LOG = log.get_logger(__name__)


class ClaimResult(msgspec.Struct):
    entry: Entry[Host] | None  # the record as written (claimed) or as last read
    claimed: bool
    reason: str = ""


async def claim(
    store: Store,
    host: str,
    server_id: str,
    resources: dict[str, int],
    attempts: int = 5,
    known: Entry[Host] | None = None,
    build: bool = False,
    check: Callable[[Host], str | None] | None = None,
) -> ClaimResult:
    """Allocate `resources` for `server_id` on `host`, if they still fit.

    `known` is the record as the caller last saw it (from the index): trying the write
    against it first saves a read whenever it is still current, which is the usual case.
    With `build`, the server is also counted among the host's builds in progress.
    `check(record)` returns why the host may not take the server (None: it may).
    """
    entry: Entry[Host] | None = known
    for _ in range(attempts):
        if entry is None:
            entry = await store.hosts.get(host)
            if entry is None:
                return ClaimResult(entry=None, claimed=False, reason="host record gone")
        record = entry.value
        if server_id in record.allocations:
            return ClaimResult(entry=entry, claimed=True)  # already ours: claims are idempotent
        if record.status != "enabled":
            return ClaimResult(entry=entry, claimed=False, reason="host disabled")
        reason = record.fits(resources) or (check(record) if check is not None else None)
        if reason:
            if entry is known:
                entry = None  # the index may be behind: decide on a fresh read
                continue
            return ClaimResult(entry=entry, claimed=False, reason=reason)
        new = msgspec.structs.replace(
            record,
            allocations={**record.allocations, server_id: dict(resources)},
            in_progress=[*record.in_progress, server_id] if build else record.in_progress,
        )
        try:
            rev = await store.hosts.update(host, new, entry.revision)
        except CasConflict:
            entry = None
            continue
        return ClaimResult(entry=Entry(key=host, value=new, revision=rev), claimed=True)
    return ClaimResult(entry=entry, claimed=False, reason="too many concurrent writers")


async def release(
    store: Store, host: str, server_id: str, failed_build: bool = False
) -> Entry[Host] | None:
    """Drop `server_id`'s allocation on `host` (a no-op when it holds none).

    With `failed_build`, the host's failed-build count goes up in the same write, so a
    redelivered failure (its allocation already gone) does not count twice.
    """

    def drop(record: Host) -> Host | None:
        if server_id not in record.allocations:
            return None
        allocations = dict(record.allocations)
        del allocations[server_id]
        failures = record.failed_builds + (1 if failed_build else 0)
        in_progress = [s for s in record.in_progress if s != server_id]
        return msgspec.structs.replace(
            record, allocations=allocations, failed_builds=failures, in_progress=in_progress
        )

    entry = await store.hosts.mutate(host, drop)
    LOG.debug("placement.released", host=host, server=server_id)
    return entry


async def move(store: Store, host: str, from_consumer: str, to_consumer: str) -> Entry[Host] | None:
    """Hand `from_consumer`'s allocation on `host` to `to_consumer`, in one write.

    A move holds the source's allocation under the migration's id while it runs, and
    gives it back to the server when it is reverted or rolled back. A no-op when
    `from_consumer` holds nothing there (the move was already made); if both hold one,
    `to_consumer` keeps its own and `from_consumer`'s is dropped.
    """

    def hand_over(record: Host) -> Host | None:
        if from_consumer not in record.allocations:
            return None
        allocations = dict(record.allocations)
        held = allocations.pop(from_consumer)
        allocations.setdefault(to_consumer, held)
        in_progress = [s for s in record.in_progress if s != from_consumer]
        return msgspec.structs.replace(record, allocations=allocations, in_progress=in_progress)

    entry = await store.hosts.mutate(host, hand_over)
    LOG.debug("placement.moved", host=host, source=from_consumer, to=to_consumer)
    return entry


async def not_in_progress(store: Store, host: str, server_id: str) -> Entry[Host] | None:
    """Stop counting `server_id` among `host`'s builds (a move's claim is no build)."""

    def drop(record: Host) -> Host | None:
        if server_id not in record.in_progress:
            return None
        in_progress = [s for s in record.in_progress if s != server_id]
        return msgspec.structs.replace(record, in_progress=in_progress)

    return await store.hosts.mutate(host, drop)
