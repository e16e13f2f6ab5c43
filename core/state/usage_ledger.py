"""The usage ledger: the run of each deleted server, kept for usage reports over past windows.

Live servers' runs are read from their records; a server's record goes when it is
deleted, so its run (launched_at to deletion, its flavor's sizes) is written here first.
A server that never launched ran no hours and leaves nothing. Entries expire after a
year and a day (the bucket's TTL).
"""

from __future__ import annotations

from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.quota_records import UsageRecord, project_key
from hvmesh.core.protocol.records import Server
from hvmesh.core.state.store import Store


async def record(store: Store, srv: Server) -> None:
    """Keep the run of `srv`, being deleted now; writing it again only moves its end."""
    if srv.launched_at is None:
        return
    run = UsageRecord(
        server_id=srv.id,
        name=srv.name,
        project=srv.project,
        user=srv.user,
        flavor=srv.flavor.name,
        vcpus=srv.flavor.vcpus,
        ram_mb=srv.flavor.ram_mb,
        disk_gb=srv.flavor.disk_gb,
        started_at=srv.launched_at,
        ended_at=now(),
    )
    await store.usage_ledger.put(f"{project_key(srv.project)}.{srv.id}", run)


async def runs(store: Store, project: str) -> list[UsageRecord]:
    """The runs of the project's deleted servers still in the ledger."""
    return await store.usage_ledger.values(project_key(project))
