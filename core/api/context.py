"""What endpoint classes use of the API service: its connection, store, indexes and config."""

from __future__ import annotations

from typing import Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext

from hvmesh.core.api.list_indexes import ListIndexes
from hvmesh.core.config import Config
from hvmesh.core.state.inventory import Index
from hvmesh.core.state.store import Store


class ApiContext(Protocol):
    """The API service as its endpoints see it (ApiService in core/api/service.py is one)."""

    @property
    def nc(self) -> Client: ...

    @property
    def js(self) -> JetStreamContext: ...

    @property
    def cfg(self) -> Config: ...

    @property
    def index(self) -> Index:
        """The inventory index: hosts, heartbeats, aggregates, zones."""
        ...

    @property
    def lists(self) -> ListIndexes:
        """The record indexes list endpoints read."""
        ...

    @property
    def st(self) -> Store:
        """The KV store, opened once the service has started."""
        ...
