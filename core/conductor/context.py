"""What the conductor's action modules may use of the conductor: one narrow, typed interface."""

from __future__ import annotations

from typing import Any, Protocol

from nats.aio.client import Client

from hvmesh.core.config import Config
from hvmesh.core.protocol.models import GroupSpec, Selection, Server
from hvmesh.core.state.store import Store


class ConductorContext(Protocol):
    """The conductor as the lifecycle, moves, shelving and power sync see it."""

    nc: Client
    js: Any  # nats.js.JetStreamContext
    cfg: Config

    @property
    def st(self) -> Store: ...

    async def place(self, srv: Server) -> Selection:
        """A claimed host for the server (an alternate first on a reschedule)."""
        ...

    async def group_spec(self, srv: Server) -> GroupSpec | None:
        """The server group's policy and members, for the scheduler."""
        ...

    async def group_place(self, server_id: str, group: GroupSpec | None, host: str) -> str | None:
        """Record the server on `host` in its group; the violation's text if the policy forbids it."""
        ...

    async def group_unplace(self, srv: Server, leave: bool = False) -> None:
        """Take the server's host out of its group's record (and the server, with `leave`)."""
        ...
