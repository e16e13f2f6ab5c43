"""Finding the records a request names, by id or unique name, among those the caller may see."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from hvmesh.core.api.requests import Ref
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import (
    Aggregate,
    Flavor,
    Image,
    Network,
    Port,
    Server,
    ServerGroup,
)
from hvmesh.core.state.record_index import RecordIndex
from hvmesh.core.state.store import Bucket, Store

Named = TypeVar("Named", Flavor, Image, Aggregate, Network)
Owned = TypeVar("Owned", Server, ServerGroup, Port)
Found = TypeVar("Found")


def check_ref(ref: Ref, what: str) -> None:
    if not ref.id and not ref.name:
        raise errors.BadRequest(f"give the {what}'s id or name")


async def resolve(lookup: Awaitable[Found], what: str) -> Found:
    """A lookup of a record a request refers to: not found there is a 400."""
    try:
        return await lookup
    except errors.NotFound as exc:
        raise errors.BadRequest(f"{what}: {exc.message}") from None


async def find_flavor(
    st: Store, ref: str, caller: Caller, index: RecordIndex[Flavor] | None = None
) -> Flavor:
    """A flavor by id or unique name; private flavors only for the admin project."""
    return await by_id_or_name(
        st.flavors, ref, "flavor", lambda f: f.is_public or caller.is_admin, index
    )


def visible_image(image: Image, caller: Caller) -> bool:
    return caller.is_admin or image.visibility == "public" or image.project == caller.project


async def find_image(
    st: Store, ref: str, caller: Caller, index: RecordIndex[Image] | None = None
) -> Image:
    return await by_id_or_name(st.images, ref, "image", lambda i: visible_image(i, caller), index)


async def own_server(st: Store, server_id: str, caller: Caller) -> Server:
    return await owned(st.servers, server_id, "server", caller)


async def by_id_or_name(
    bucket: Bucket[Named],
    ref: str,
    what: str,
    visible: Callable[[Named], bool],
    index: RecordIndex[Named] | None = None,
) -> Named:
    """The record keyed `ref`, else the one record named `ref`, of those `visible` admits.

    With the bucket's `index` (the API's list index, fed by a watch), a name is looked up
    there and its record read again by key, fresh; only a name the index does not hold
    yet (made a moment ago) costs a read of the whole bucket.
    """
    entry = await bucket.get(ref) if is_key(ref) else None
    if entry is not None and visible(entry.value):
        return entry.value
    if index is not None and index.ready.is_set():
        keys = [k for k, e in index.records.items() if e.value.name == ref and visible(e.value)]
        if len(keys) == 1:
            fresh = await bucket.get(keys[0])
            if fresh is not None and fresh.value.name == ref and visible(fresh.value):
                return fresh.value
        elif len(keys) > 1:
            raise errors.Conflict(f"more than one {what} is named {ref!r}; use its id")
    matches = [r for r in await bucket.values() if r.name == ref and visible(r)]
    if len(matches) > 1:
        raise errors.Conflict(f"more than one {what} is named {ref!r}; use its id")
    if not matches:
        raise errors.NotFound(f"{what} {ref} not found")
    return matches[0]


async def owned(bucket: Bucket[Owned], ref: str, what: str, caller: Caller) -> Owned:
    """The record keyed `ref` if it is the caller's project's (or the caller is admin),
    else the one record of the caller's own project named `ref`.

    A name is looked up in the caller's project only, the admin's too; several records of
    that name are a 409 listing their ids. Another project's record is "not found", never
    "forbidden": its existence is not told.
    """
    entry = await bucket.get(ref) if is_key(ref) else None
    if entry is not None and (caller.is_admin or entry.value.project == caller.project):
        return entry.value
    matches = sorted(
        (r for r in await bucket.values() if r.name == ref and r.project == caller.project),
        key=lambda r: (r.created_at, r.id),
    )
    if len(matches) > 1:
        ids = ", ".join(r.id for r in matches)
        raise errors.Conflict(f"more than one {what} is named {ref!r}: {ids}; use an id")
    if not matches:
        raise errors.NotFound(f"{what} {ref} not found")
    return matches[0]


def is_key(text: str) -> bool:
    """Whether `text` can be a KV key: no spaces, and no empty token between dots."""
    return (
        bool(text)
        and all(c.isalnum() or c in "-_=./" for c in text)
        and all(token for token in text.split("."))
    )
