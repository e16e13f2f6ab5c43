"""Nova's integer ids (before 2.53) for records hvmesh names by string: derived, never stored."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from hvmesh.core.rest.calls import Compute

PAGES = 1000  # pages a full listing may take before it stops


def number(kind: str, key: str) -> int:
    """A stable positive integer for `key`: every REST instance derives the same one."""
    return (zlib.crc32(f"{kind}:{key}".encode()) & 0x7FFFFFFF) or 1


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
    c: Compute, ref: str, kind: str, resource: str, key: Callable[[dict[str, Any]], str]
) -> str:
    """The hvmesh key a path segment names: the key itself, or the integer derived from it."""
    if not ref.isdigit():
        return ref
    wanted = int(ref)
    for record in await every(c, resource):
        if number(kind, key(record)) == wanted:
            return key(record)
    return ref
