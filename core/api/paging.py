"""Paging for every list endpoint: `limit` and `marker` in, one page and a link to the next out.

A page holds at most `limit` records, clamped to `[api] max_limit` (as Nova clamps to its
max_limit), and never more bytes than half of NATS's max payload, whatever the records
hold: a page that stops early still links to the next. A reply links to the next page
only when there is one: {"servers": [...], "servers_links": [{"rel": "next", "marker":
ID}]}, the marker being the id of the page's last record. An unknown marker is a 400
naming it.

Lists are read from in-memory record indexes (core/state/record_index.py), caught up
with their bucket before each page: `from_index` makes such a page.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Annotated, Any, Generic, TypeVar

from msgspec import Meta, Struct

from hvmesh.core.api.context import ApiContext
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import Request, encode
from hvmesh.core.state.record_index import RecordIndex

T = TypeVar("T")
R = TypeVar("R", bound=Struct)  # a record

MIN_PAGE_BYTES = 64 * 1024  # a page's byte budget even on a server with a tiny max payload
SCAN_SECONDS = 0.5  # the longest one page may look for records its filters keep


class Page(Request):
    """The paging fields every list request takes."""

    limit: Annotated[int, Meta(ge=0)] | None = None  # default and maximum: [api] max_limit
    marker: Annotated[str, Meta(min_length=1, max_length=255)] | None = None  # last id seen


def page_limit(api: ApiContext, limit: int | None) -> int:
    """The records a page may hold: the request's limit clamped to [api] max_limit."""
    most = api.cfg.api.max_limit
    return most if limit is None else min(limit, most)


def page_bytes(api: ApiContext) -> int:
    """The bytes a page's records may take: half of the connection's max payload."""
    return max(MIN_PAGE_BYTES, int(api.nc.max_payload or 0) // 2)


def after_marker(items: Sequence[T], marker: str | None, ident: Callable[[T], str]) -> Iterator[T]:
    """`items` from just past the one whose id is `marker` (all of them without one)."""
    if marker is None:
        return iter(items)
    for i, item in enumerate(items):
        if ident(item) == marker:
            return iter(items[i + 1 :])
    raise errors.BadRequest(f"marker {marker} not found")


class Scan(Generic[T]):
    """The items a filter keeps, skipping others for at most `seconds` in a row: a filter
    that keeps few of many cannot hold the API up. When time runs out, `cut` is the last
    item looked at, and the page ends there (shorter than its limit) with a link to go on
    from it."""

    def __init__(
        self, items: Iterable[T], keep: Callable[[T], bool], seconds: float = SCAN_SECONDS
    ) -> None:
        self._items = items
        self._keep = keep
        self._seconds = seconds
        self.cut: T | None = None

    def __iter__(self) -> Iterator[T]:
        deadline = time.monotonic() + self._seconds
        last: T | None = None
        for n, item in enumerate(self._items):
            if n % 256 == 255 and time.monotonic() > deadline:
                self.cut = last
                return
            last = item
            if self._keep(item):
                yield item
                deadline = time.monotonic() + self._seconds


def take(
    items: Iterable[T],
    limit: int,
    budget: int,
    ident: Callable[[T], str],
    view: Callable[[T], Any],
) -> tuple[list[Any], str | None]:
    """Up to `limit` views of `items` within `budget` bytes, and the next page's marker
    (None when `items` has nothing more)."""
    rows: list[Any] = []
    if limit <= 0:
        return rows, None  # limit 0: an empty page, as Nova's
    size = 0
    last: T | None = None
    for item in items:
        if last is not None and len(rows) >= limit:
            return rows, ident(last)
        row = view(item)
        n = len(encode(row)) + 1
        if last is not None and size + n > budget:
            return rows, ident(last)
        rows.append(row)
        size += n
        last = item
    return rows, None


def reply(key: str, rows: list[Any], next_marker: str | None) -> dict[str, Any]:
    """The list's reply: its records under `key`, and `<key>_links` when more follow."""
    out: dict[str, Any] = {key: rows}
    if next_marker is not None:
        out[f"{key}_links"] = [{"rel": "next", "marker": next_marker}]
    return out


def page(
    api: ApiContext,
    key: str,
    items: Sequence[T],
    req: Page,
    ident: Callable[[T], str],
    view: Callable[[T], Any] = lambda item: item,
) -> dict[str, Any]:
    """One page of a list already in its order and filtered: the whole reply."""
    rows, more = take(
        after_marker(items, req.marker, ident),
        page_limit(api, req.limit),
        page_bytes(api),
        ident,
        view,
    )
    return reply(key, rows, more)


async def from_index(
    api: ApiContext,
    key: str,
    index: RecordIndex[R],
    req: Page,
    scopes: Sequence[Hashable] | None,
    ident: Callable[[R], str],
    view: Callable[[R], Any] = lambda item: item,
    keep: Callable[[R], bool] = lambda item: True,
    reverse: bool = False,
) -> dict[str, Any]:
    """One page of the records of `scopes` (None: all) that `keep` keeps, read from an
    index in its order once it has caught up with its bucket: the whole reply."""
    await index.catch_up()
    after = None
    if req.marker is not None:
        after = index.locate(req.marker, scopes)
        if after is None:
            raise errors.BadRequest(f"marker {req.marker} not found")
    found = Scan(index.iterate(scopes, after, reverse), keep)
    rows, more = take(found, page_limit(api, req.limit), page_bytes(api), ident, view)
    if more is None and found.cut is not None:
        more = ident(found.cut)  # out of time: the next page goes on from there
    return reply(key, rows, more)
