"""The servers index: every server in memory, ordered by (created_at, id), fed by a KV watch.

The API lists servers from here, never by reading the servers bucket per call: it is a
record index (core/state/record_index.py) whose groups are projects, so a tenant's page
never walks other projects' servers.
"""

from __future__ import annotations

from collections.abc import Iterator

from hvmesh.core.protocol.records import Server
from hvmesh.core.state.record_index import TOMBSTONES, RecordIndex
from hvmesh.core.state.store import Entry

SortKey = tuple[float, str]


def sort_key(s: Server) -> SortKey:
    return (s.created_at, s.id)


def project_of(s: Server) -> tuple[str]:
    return (s.project,)


class ServerIndex(RecordIndex[Server]):
    """The servers of a deployment, ordered, per project, kept current by a KV watch."""

    def __init__(self, tombstones: int = TOMBSTONES) -> None:
        super().__init__("server_index", sort_key, project_of, tombstones=tombstones)

    @property
    def servers(self) -> dict[str, Entry[Server]]:
        return self.records

    def place_of(self, server_id: str, project: str | None) -> SortKey | None:
        """Where a server is (or was, if deleted lately) in the order; None when unknown
        or of another project than `project` (None: any project)."""
        place = self.locate(server_id, None if project is None else (project,))
        return None if place is None else (place[0], place[1])

    def walk(
        self, project: str | None, after: SortKey | None = None, reverse: bool = False
    ) -> Iterator[Server]:
        """Servers of `project` (None: every project) in order, from just past `after`."""
        return self.iterate(None if project is None else (project,), after, reverse)
