"""Resize and cold migration: the move itself, confirm-resize, revert-resize and auto-confirm.

moves.py describes every move and holds the steps they share.
"""

from __future__ import annotations

import uuid

import msgspec

from hvmesh.core import log
from hvmesh.core.bus import notify
from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle, NotYet
from hvmesh.core.conductor.moves import MoveSteps, power_on
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.action_requests import ConfirmResize, action_name
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.protocol.records import Migration, Server
from hvmesh.core.state import action_log, placement
from hvmesh.core.state.tasks import publish_task

LOG = log.get_logger(__name__)

AUTO_CONFIRM = "auto-confirm-resize"  # the timer that confirms a resize left unconfirmed
COLD = ("resize", "migrate")
FINISH_WAIT = 2.0  # seconds an auto-confirm due before its resize ended waits, each time


def register(lc: Lifecycle) -> None:
    m = _Resize(lc)
    for action in COLD:
        lc.register(
            action,
            Handlers(
                run=m.cold_run,
                steps={
                    "migrate_disk_and_power_off": m.cold_migrated,
                    "finish_migration": m.cold_finished,
                },
                timeout=m.uncertain,
            ),
        )
    lc.register(
        "confirm-resize",
        Handlers(run=m.confirm_run, steps={"confirm_migration": m.confirmed}, timeout=m.uncertain),
    )
    lc.register(
        "revert-resize",
        Handlers(
            run=m.revert_run,
            steps={"destroy": m.revert_destroyed, "finish_revert_migration": m.reverted},
            timeout=m.uncertain,
        ),
    )
    lc.register_timer(AUTO_CONFIRM, m.auto_confirm)


class _Resize(MoveSteps):
    # --- resize and cold migration ---------------------------------------------------------

    async def cold_run(self, task: Task, srv: Server) -> None:
        assert task.action is not None  # an action task carries its action
        action = action_name(task.action)
        placed = await self._begin_with_destination(task, srv, action)
        if placed is None:
            return
        m, dest = placed
        moving = msgspec.structs.replace(m, dest_host=dest, status="migrating")
        written = await self.lc.transition(
            srv,
            lambda s: msgspec.structs.replace(s, task_state=S.RESIZE_MIGRATING, migration=moving),
        )
        if written is None:  # deleted or reset meanwhile: the claims go back
            await self._settle(srv, m, m.source_host, dest)
            return
        await self.lc.send(
            written.value, action, "migrate_disk_and_power_off", m.source_host, {"dest": dest}
        )

    async def cold_migrated(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None and m.dest_host is not None
        if not ev.ok:  # the guest is still on the source: roll back, as it was
            await self._end(srv, ev.action, m.source_host, f"{ev.action} failed: {ev.message}")
            return
        power = ev.power_state
        written = await self.lc.transition(
            srv,
            lambda s: msgspec.structs.replace(
                s,
                task_state=S.RESIZE_FINISH,
                power_state=power if power is not None else s.power_state,
            ),
        )
        if written is None:
            return
        srv = written.value
        there = msgspec.structs.replace(srv, host=m.dest_host, flavor=m.new_flavor or srv.flavor)
        await self.lc.send(
            srv,
            ev.action,
            "finish_migration",
            m.dest_host,
            {"power_on": power_on(m)},
            await self._image(srv),
            server=there,
        )

    async def cold_finished(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None and m.dest_host is not None
        if not ev.ok:
            await self._end(
                srv, ev.action, m.source_host, f"{ev.action} failed: {ev.message}", S.ERROR
            )
            return
        dest, power = m.dest_host, ev.power_state
        finished = msgspec.structs.replace(m, status="finished")

        def resized(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                vm_state=S.RESIZED,
                host=dest,
                flavor=m.new_flavor or s.flavor,
                power_state=power if power is not None else s.power_state,
                migration=finished,
                fault=None,
            )

        # The auto-confirm is set before the action ends, as the shelve's offload is: a
        # write that lands and a publish after it that fails (a node's election) would
        # leave the server RESIZED with no timer, the event's retry finding the action
        # over. Set first, a retry sets it again (the same message id); if the action
        # never ends RESIZED, the timer finds the server otherwise and does nothing.
        window = self.lc.cfg.conductor.resize_confirm_window
        if window > 0:
            await self.lc.timer(srv, AUTO_CONFIRM, window, migration=m.id)
        await self.lc.finish(srv, ev.action, resized)

    async def auto_confirm(self, task: Task, srv: Server) -> None:
        """Confirm a resize left unconfirmed for the window, as an admin's confirm-resize.

        The request id comes from the migration's, so a timer handled twice (a conductor
        died halfway) accepts and queues the same confirm, which happens once.
        """
        migration_id = task.params.get("migration")
        request_id = f"req-{uuid.uuid5(uuid.NAMESPACE_OID, f'auto-confirm:{migration_id}')}"

        current = await self.lc.st.servers.get(srv.id)
        s = current.value if current is not None else None
        finishing = s is not None and s.vm_state != S.RESIZED and s.task_state == S.RESIZE_FINISH
        if (
            finishing
            and s is not None
            and s.migration is not None
            and s.migration.id == migration_id
        ):
            raise NotYet(FINISH_WAIT)  # set just before the resize ended: not ended yet

        def accept(s: Server) -> Server | None:
            if s.request_id == request_id:
                return None  # accepted by an earlier try
            if (
                s.vm_state != S.RESIZED
                or s.task_state is not None
                or s.migration is None
                or s.migration.id != migration_id
            ):
                return None
            return msgspec.structs.replace(
                s,
                task_state=S.RESIZE_CONFIRMING,
                request_id=request_id,
                fault=None,
                updated_at=now(),
            )

        written = await self.lc.st.servers.mutate(srv.id, accept)
        if written is None or written.value.request_id != request_id:
            return

        LOG.info("moves.auto_confirm", server=srv.id, migration=migration_id)
        await action_log.start(
            self.lc.st, srv.id, request_id, "confirm-resize", srv.project, srv.user
        )
        await notify.updated(self.lc.conductor.nc, srv, written.value)
        await publish_task(
            self.lc.conductor.js,
            Task(
                kind="action",
                server_id=srv.id,
                request_id=request_id,
                action=ConfirmResize(id=srv.id),
            ),
        )

    # --- confirm and revert ---------------------------------------------------------------

    async def confirm_run(self, task: Task, srv: Server) -> None:
        await self.lc.started(srv, "confirm-resize")
        m = srv.migration
        if m is None:
            await self.lc.fail(srv, "confirm-resize", f"server {srv.id} has no resize to confirm")
            return
        await self.lc.send(srv, "confirm-resize", "confirm_migration", m.source_host)

    async def confirmed(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None and srv.host is not None
        if not ev.ok:
            await self._end(srv, ev.action, srv.host, f"{ev.action} failed: {ev.message}", S.ERROR)
            return
        await placement.release(self.lc.st, m.source_host, m.id)

        def confirmed(s: Server) -> Server:
            return msgspec.structs.replace(s, vm_state=m.old_vm_state, migration=None, fault=None)

        await self.lc.finish(srv, ev.action, confirmed)

    async def revert_run(self, task: Task, srv: Server) -> None:
        await self.lc.started(srv, "revert-resize")
        m = srv.migration
        if m is None or m.dest_host is None:
            await self.lc.fail(srv, "revert-resize", f"server {srv.id} has no resize to revert")
            return
        if m.dest_host == m.source_host:  # resized in place: one instance, reverted there
            await self._revert_on_source(srv, "revert-resize", m)
            return
        await self.lc.send(srv, "revert-resize", "destroy", m.dest_host)

    async def revert_destroyed(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None and m.dest_host is not None
        if not ev.ok:
            await self._end(
                srv, ev.action, m.dest_host, f"{ev.action} failed: {ev.message}", S.ERROR
            )
            return
        await self._revert_on_source(srv, ev.action, m)

    async def _revert_on_source(self, srv: Server, action: str, m: Migration) -> None:
        """The destination's copy is gone (or was the source's own instance): claims back
        to the old flavor on the source, which brings its instance back."""
        assert m.dest_host is not None
        await placement.release(self.lc.st, m.dest_host, srv.id)
        await placement.move(self.lc.st, m.source_host, m.id, srv.id)
        await self._group_host(srv, m.source_host)
        reverting = msgspec.structs.replace(m, status="reverting")
        written = await self.lc.transition(
            srv,
            lambda s: msgspec.structs.replace(
                s, host=m.source_host, flavor=m.old_flavor or s.flavor, migration=reverting
            ),
        )
        if written is None:
            return
        srv = written.value
        await self.lc.send(
            srv, action, "finish_revert_migration", m.source_host, {"power_on": power_on(m)}
        )

    async def reverted(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None
        if not ev.ok:
            await self._end(
                srv, ev.action, m.source_host, f"{ev.action} failed: {ev.message}", S.ERROR
            )
            return
        power = ev.power_state

        def reverted(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                vm_state=m.old_vm_state,
                power_state=power if power is not None else s.power_state,
                migration=None,
                fault=None,
            )

        await self.lc.finish(srv, ev.action, reverted)


async def after_stuck(lc: Lifecycle, seen: Server) -> None:
    """A server left RESIZED by a task the conductor ended as stuck (a confirm or revert
    whose task never ran: its timer found it busy and passed) gets its auto-confirm again,
    so it does not wait for a confirm forever."""
    window = lc.cfg.conductor.resize_confirm_window
    if seen.vm_state != S.RESIZED or seen.migration is None or not seen.request_id:
        return
    if window > 0:
        await lc.timer(seen, AUTO_CONFIRM, window, migration=seen.migration.id)
