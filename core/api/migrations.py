"""The API's migrations endpoint: hvmesh.api.migrations.list, every server move (Nova's os-migrations)."""

from __future__ import annotations

from typing import Literal

from hvmesh.core.api import paging
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.paging import Page
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol.base import Name
from hvmesh.core.protocol.migration_records import MigrationRecord


class MigrationList(Page):
    """Filters, as Nova's: a host (source or destination), a status, a server, a kind,
    a project; newest first, paged by migration id."""

    host: Name | None = None
    status: Name | None = None
    server_id: Name | None = None
    kind: Literal["resize", "migration", "live-migration", "evacuation"] | None = None
    project: Name | None = None
    changes_since: float | None = None  # seconds since the epoch: updated at or after


class MigrationEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    async def list(self, caller: Caller, req: MigrationList) -> dict:
        def keep(m: MigrationRecord) -> bool:
            return (
                (req.host is None or req.host in (m.source_host, m.dest_host))
                and (req.status is None or m.status == req.status)
                and (req.server_id is None or m.server_id == req.server_id)
                and (req.kind is None or m.kind == req.kind)
                and (req.project is None or m.project == req.project)
                and (req.changes_since is None or m.updated_at >= req.changes_since)
            )

        found = [m for m in await self.api.st.migrations.values() if keep(m)]
        found.sort(key=lambda m: (m.created_at, m.id), reverse=True)
        return paging.page(self.api, "migrations", found, req, lambda m: m.id)
