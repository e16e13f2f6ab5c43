"""What the conductor's modules may use of the conductor: one narrow, typed interface."""

from __future__ import annotations

from typing import Any, Protocol

from nats.aio.client import Client

from hvmesh.core.config import Config
from hvmesh.core.state.store import Store


class ConductorContext(Protocol):
    """The conductor as builds, deletes, events, the actions and power sync see it."""

    nc: Client
    js: Any  # nats.js.JetStreamContext
    cfg: Config

    @property
    def st(self) -> Store: ...
