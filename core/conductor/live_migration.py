"""Live migration: prepare on the destination, move the running guest, take over or roll back.

moves.py describes every move and holds the steps they share.
"""

from __future__ import annotations

import msgspec

from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle
from hvmesh.core.conductor.moves import MoveSteps
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.protocol.records import Fault, Server
from hvmesh.core.state import placement


def register(lc: Lifecycle) -> None:
    m = _LiveMigration(lc)
    lc.register(
        "live-migrate",
        Handlers(
            run=m.live_run,
            steps={
                "prepare_live_migration": m.live_prepared,
                "live_migration": m.live_migrated,
                "post_live_migration_at_destination": m.live_posted,
                "rollback_live_migration_at_destination": m.live_rolled_back,
            },
            timeout=m.live_timeout,
        ),
    )


class _LiveMigration(MoveSteps):
    # --- live migration ---------------------------------------------------------------------

    async def live_run(self, task: Task, srv: Server) -> None:
        action = "live-migrate"
        placed = await self._begin_with_destination(task, srv, action)
        if placed is None:
            return
        m, dest = placed
        preparing = msgspec.structs.replace(m, dest_host=dest, status="preparing")
        written = await self.lc.transition(
            srv, lambda s: msgspec.structs.replace(s, migration=preparing)
        )
        if written is None:
            await self._settle(srv, m, m.source_host, dest)
            return
        await self.lc.send(
            written.value, action, "prepare_live_migration", dest, {"source": m.source_host}
        )

    async def _live_status(self, srv: Server, status: str, **change: object) -> Server | None:
        m = srv.migration
        assert m is not None
        moved = msgspec.structs.replace(m, status=status)
        written = await self.lc.transition(
            srv, lambda s: msgspec.structs.replace(s, migration=moved, **change)
        )
        return written.value if written is not None else None

    async def live_prepared(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None and m.dest_host is not None
        if not ev.ok:
            await self._live_rollback(srv, f"{ev.action} failed: {ev.message}")
            return
        moving = await self._live_status(srv, "running")
        if moving is not None:
            await self.lc.send(
                moving, ev.action, "live_migration", m.source_host, {"dest": m.dest_host}
            )

    async def live_migrated(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None and m.dest_host is not None
        if not ev.ok:
            await self._live_rollback(srv, f"{ev.action} failed: {ev.message}")
            return
        # The guest runs on the destination now: the record says so from here on.
        there = await self._live_status(srv, "post-migrating", host=m.dest_host)
        if there is not None:
            await self.lc.send(there, ev.action, "post_live_migration_at_destination", m.dest_host)

    async def live_posted(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None and m.dest_host is not None
        if not ev.ok:
            await self._end(
                srv, ev.action, m.dest_host, f"{ev.action} failed: {ev.message}", S.ERROR
            )
            return
        await placement.release(self.lc.st, m.source_host, m.id)
        power = ev.power_state

        def migrated(s: Server) -> Server:
            # A paused guest stays paused (as the power-state sync will find it).
            keep = s.vm_state == S.PAUSED or power is None
            return msgspec.structs.replace(
                s,
                power_state=s.power_state if keep else power,
                migration=None,
                fault=None,
            )

        await self.lc.finish(srv, ev.action, migrated)

    async def _live_rollback(self, srv: Server, error: str) -> None:
        """The guest never left the source: the destination drops what it prepared."""
        m = srv.migration
        assert m is not None and m.dest_host is not None
        rolling = await self._live_status(srv, "error", fault=Fault(code=500, message=error))
        if rolling is not None:
            await self.lc.send(
                rolling, "live-migrate", "rollback_live_migration_at_destination", m.dest_host
            )

    async def live_rolled_back(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None
        error = srv.fault.message if srv.fault else "live-migrate failed"
        if not ev.ok:
            error += f" (and its rollback on {ev.host}: {ev.message})"
        await self._end(srv, ev.action, m.source_host, error)

    async def live_timeout(self, task: Task, srv: Server) -> None:
        m = srv.migration
        assert m is not None
        why = f"live-migrate failed: {self.lc.timeout_reason(task)}"
        if m.status == "preparing":  # the guest has not moved: nothing to undo on the source
            await self._end(srv, "live-migrate", m.source_host, why)
        elif m.status == "error":  # the rollback went unanswered; the guest is on the source
            first = srv.fault.message if srv.fault else "live-migrate failed"
            await self._end(srv, "live-migrate", m.source_host, f"{first}; {why}")
        else:  # the guest may be on either host: as Nova, ERROR where the record says
            assert srv.host is not None
            await self._end(srv, "live-migrate", srv.host, why, S.ERROR)
