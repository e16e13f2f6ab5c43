"""The request bodies several API endpoints share: none, a record by id or name, an id."""

from __future__ import annotations

from hvmesh.core.protocol.base import Request


class Empty(Request):
    """A request that takes no fields."""


class Ref(Request):
    """A record named by id or by unique name."""

    id: str | None = None
    name: str | None = None


class IdOnly(Request):
    id: str
