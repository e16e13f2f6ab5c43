"""A server's move as Nova's os-migrations lists it: kept in the migrations bucket after it ends."""

from __future__ import annotations

from typing import Literal

from msgspec import field

from hvmesh.core.protocol.base import Record, now


class MigrationRecord(Record):
    """One move of one server: resize, cold or live migration, evacuation.

    Written by the conductor whenever the server's move changes (core/state/migration_log.py):
    `status` follows the move (`pre-migrating`, `preparing`, `running`, `post-migrating`,
    `finished`, `reverting`, ...) and ends as Nova's do: `confirmed` or `reverted` (resize,
    migration), `completed` (live migration), `done` (evacuation), or `error`.
    """

    id: str
    server_id: str
    project: str
    user: str
    kind: Literal["resize", "migration", "live-migration", "evacuation"]
    source_host: str
    dest_host: str | None = None
    old_flavor_id: str | None = None
    new_flavor_id: str | None = None
    status: str = "pre-migrating"
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
