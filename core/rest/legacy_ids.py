"""Nova's ids for records hvmesh names by string (integers, UUIDs from 2.53), derived and never
stored; full listings; Nova's refusal of unknown query parameters."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from hvmesh.core.rest.calls import Compute
from hvmesh.core.rest.errors import RestError

PAGES = 1000  # pages a full listing may take before it stops
# The namespace of the derived UUIDs: fixed, so every REST instance derives the same ones.
NAMESPACE = uuid.UUID("0c551a1e-77d8-5770-b16c-0bbed8b7fe5a")


def number(kind: str, key: str) -> int:
    """A stable positive integer for `key`: every REST instance derives the same one."""
    return (zlib.crc32(f"{kind}:{key}".encode()) & 0x7FFFFFFF) or 1


def uuid_of(kind: str, key: str) -> str:
    """A stable UUID for `key` (UUID5 in NAMESPACE): every REST instance derives the same one."""
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{key}"))


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def public_id(c: Compute, kind: str, key: str) -> int | str:
    """The id Nova shows for a hypervisor or service: an integer before 2.53, a UUID from it."""
    return uuid_of(kind, key) if c.at_least(2, 53) else number(kind, key)


def only_query(c: Compute, allowed: Iterable[str]) -> None:
    """400 naming the first query parameter not in `allowed`, as Nova's strict query schemas."""
    known = set(allowed)
    for name in c.request.query:
        if name not in known:
            raise RestError(400, f"Additional properties are not allowed ({name!r} was unexpected)")


async def every(c: Compute, resource: str, body: dict[str, Any] | None = None) -> list[Any]:
    """Every record of a paged NATS listing, following its markers to the end."""
    out: list[Any] = []
    request = dict(body or {})
    for _ in range(PAGES):
        reply = await c.call(resource, "list", request)
        out.extend(reply[resource])
        more = reply.get(f"{resource}_links") or []
        if not more:
            break
        request["marker"] = more[0]["marker"]
    return out


async def resolve(
    c: Compute,
    ref: str,
    kind: str,
    resource: str,
    key: Callable[[dict[str, Any]], str],
    uuids: bool = False,
) -> str:
    """The hvmesh key a path segment names: the key itself, or the integer (or, with `uuids`,
    the UUID) derived from it; a reference that matches nothing is returned as it is."""
    derived: Callable[[str], Any]
    if ref.isdigit():
        wanted: Any = int(ref)
        derived = lambda k: number(kind, k)  # noqa: E731
    elif uuids and is_uuid(ref):
        wanted = str(uuid.UUID(ref))
        derived = lambda k: uuid_of(kind, k)  # noqa: E731
    else:
        return ref
    for record in await every(c, resource):
        if derived(key(record)) == wanted:
            return key(record)
    return ref
