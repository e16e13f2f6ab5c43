"""The record of an idempotent create: a project's client token and the reply it got."""

from __future__ import annotations

from typing import Any

from msgspec import field

from hvmesh.core.protocol.base import Record, now


class ClientToken(Record):
    """A servers.create that named a client token: under way (`reply` None) or answered.

    A retry with the same token and the same body gets `reply` again; `digest` is the
    SHA-256 of the request body without its token, so another body is told apart.
    """

    project: str
    token: str
    digest: str
    created_at: float = field(default_factory=now)
    reply: dict[str, Any] | None = None
