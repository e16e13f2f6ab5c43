"""The migrations bucket: each server move recorded as it changes and kept once it ends."""

from __future__ import annotations

import msgspec

from hvmesh.core import log
from hvmesh.core.protocol import states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.migration_records import MigrationRecord
from hvmesh.core.protocol.records import Migration, Server
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

# How a move that went to its destination ends, by kind (Nova's statuses).
ARRIVED = {
    "resize": "confirmed",
    "migration": "confirmed",
    "live-migration": "completed",
    "evacuation": "done",
}


def outcome(m: Migration, after: Server) -> str:
    """The final status of move `m`, from the server record that ended it."""
    if after.vm_state == states.ERROR:
        return "error"
    if m.dest_host is not None and after.host == m.dest_host and m.dest_host != m.source_host:
        return ARRIVED[m.kind]
    if m.kind in ("resize", "migration") and m.status == "reverting":
        return "reverted"
    if after.host == m.source_host and m.kind in ("resize", "migration"):
        # A resize on its own host ends there either way: confirmed unless reverted.
        return "confirmed" if after.flavor == m.new_flavor else "reverted"
    return "error"


def _record(server: Server, m: Migration, status: str) -> MigrationRecord:
    return MigrationRecord(
        id=m.id,
        server_id=server.id,
        project=server.project,
        user=server.user,
        kind=m.kind,
        source_host=m.source_host,
        dest_host=m.dest_host,
        old_flavor_id=m.old_flavor.id if m.old_flavor else None,
        new_flavor_id=m.new_flavor.id if m.new_flavor else None,
        status=status,
        created_at=m.created_at,
        updated_at=now(),
    )


async def follow(store: Store, before: Server, after: Server) -> None:
    """Record what a server write did to its move: begun or changed, or ended."""
    old, new = before.migration, after.migration
    if old is not None and (new is None or new.id != old.id):
        status = outcome(old, after)
        await store.migrations.put(old.id, _record(after, old, status))
        LOG.info("migrations.ended", server=after.id, migration=old.id, status=status)
    if new is not None and (
        old is None or msgspec.structs.astuple(old) != msgspec.structs.astuple(new)
    ):
        await store.migrations.put(new.id, _record(after, new, new.status))
