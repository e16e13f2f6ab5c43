"""Unique names: a name is held in the "names" bucket, taken by compare-and-set before its record is written.

Flavor and aggregate names are unique in the deployment, keypair names per user (as in
Nova); server group names are not unique. A create takes the name's hold (KV create:
only one writer wins), then writes its record; a delete removes the record, then the
hold. So a crash leaves at worst a hold whose record was never written or is gone: the
next create of that name finds no record holding it and takes the hold over (by
compare-and-set), once the hold is older than GRACE, so a create still in flight is
never overtaken. A create that stalled past GRACE and was overtaken notices it after its
write (`holds`) and takes its record back.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import NameClaim
from hvmesh.core.state.store import Bucket, CasConflict, Store

LOG = log.get_logger(__name__)

GRACE = 60.0  # seconds a hold without its record counts as a create in progress
ATTEMPTS = 5


def name_key(kind: str, name: str, scope: tuple[str, ...] = ()) -> str:
    """The hold's key: any name (and scope) fits, as a digest."""
    digest = hashlib.sha256("\0".join((*scope, name)).encode()).hexdigest()
    return f"{kind}.{digest}"


async def take(
    store: Store,
    records: Bucket[Any],
    kind: str,
    name: str,
    owner: str,
    scope: tuple[str, ...] = (),
) -> str:
    """Hold `name` for record `owner` (in `records`); the hold's token, for `holds` and
    `give_up`. Conflict (409) naming the name when another record holds it."""
    key = name_key(kind, name, scope)
    claim = NameClaim(kind=kind, name=name, owner=owner, token=str(uuid.uuid4()))
    for _ in range(ATTEMPTS):
        try:
            await store.names.create(key, claim)
            return claim.token
        except CasConflict:
            pass
        held = await store.names.get(key)
        if held is None:
            continue  # given up meanwhile
        if await _live(records, held.value):
            article = "an" if kind[0] in "aeiou" else "a"
            raise errors.Conflict(f"{article} {kind} named {name!r} exists")
        try:
            await store.names.update(key, claim, held.revision)
        except CasConflict:
            continue
        LOG.info("names.taken_over", kind=kind, name=name, stale_owner=held.value.owner)
        return claim.token
    raise errors.Conflict(f"a {kind} named {name!r} is being created")  # taken over and over


async def _live(records: Bucket[Any], held: NameClaim) -> bool:
    """Whether a hold stands: its record exists under that name, or may still be written."""
    entry = await records.get(held.owner)
    if entry is not None and getattr(entry.value, "name", None) == held.name:
        return True
    return entry is None and now() - held.at < GRACE


async def holds(
    store: Store, kind: str, name: str, token: str, scope: tuple[str, ...] = ()
) -> bool:
    """Whether the hold taken with `token` is still the name's."""
    held = await store.names.get(name_key(kind, name, scope))
    return held is not None and held.value.token == token


async def give_up(
    store: Store,
    kind: str,
    name: str,
    owner: str,
    scope: tuple[str, ...] = (),
    token: str = "",
) -> None:
    """Drop the hold on `name` if record `owner` has it (with `token`: if that create has it)."""
    key = name_key(kind, name, scope)
    held = await store.names.get(key)
    if held is None or held.value.owner != owner or (token and held.value.token != token):
        return
    with contextlib.suppress(CasConflict):  # taken over meanwhile: no longer ours to drop
        await store.names.delete(key, revision=held.revision)


async def create(
    store: Store,
    records: Bucket[Any],
    kind: str,
    record: Any,
    scope: tuple[str, ...] = (),
    legacy: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Write `record` (its `id` the key, its `name` unique in `scope`) holding its name.

    `legacy()` tells whether a record from before names were held already has the name
    (such a record holds none). Conflict (409) naming the name when it is taken, or
    naming the id when a record has it.
    """
    article = "an" if kind[0] in "aeiou" else "a"
    taken = errors.Conflict(f"{article} {kind} named {record.name!r} exists")
    token = await take(store, records, kind, record.name, record.id, scope)
    try:
        if legacy is not None and await legacy():
            raise taken
        try:
            await records.create(record.id, record)
        except CasConflict:
            raise errors.Conflict(f"{kind} id {record.id} exists") from None
    except errors.Conflict:
        await give_up(store, kind, record.name, record.id, scope, token)
        raise
    if not await holds(store, kind, record.name, token, scope):
        await records.delete(record.id)  # stalled past GRACE and overtaken: ours goes
        raise taken
