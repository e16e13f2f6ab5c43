"""Moves: resize (confirm, revert, auto-confirm), cold and live migration, evacuation.

While a move runs, the source host's allocation is held under the migration's id (as
Nova's migration consumer) and the destination's under the server's id, claimed by the
scheduler with the flavor the server will have there. The source is never a candidate
(Nova's allow_resize_to_same_host is off by default), and an admin's chosen target must
still pass every filter.

- resize and migrate: the source copies the disk and powers off
  (migrate_disk_and_power_off), the destination starts it (finish_migration), and the
  server waits in RESIZED (VERIFY_RESIZE) on the destination with both allocations held.
  confirm-resize drops the source's copy and its allocation; revert-resize destroys the
  destination's copy, gives its allocation back, and restarts the source's
  (finish_revert_migration). With `[conductor] resize_confirm_window`, a resize left
  unconfirmed that long is confirmed as an admin would (Nova's _poll_unconfirmed_resizes).
- live-migrate: the destination prepares (prepare_live_migration), the source moves the
  running guest (live_migration), the destination takes over
  (post_live_migration_at_destination). A failure before the guest moved is rolled back
  (rollback_live_migration_at_destination): the server stays where it was.
- evacuate: the source is down; the server is rebuilt on a new host.

A step that fails before anything irreversible happened leaves the server as it was,
with a fault. A step that fails, or whose host does not answer, once the guest may be
half moved leaves it in ERROR, as Nova does. Either way the claims are settled for the
host the server record names: its own allocation there, none elsewhere, no migration
consumer left, so the audit is clean.
"""

from __future__ import annotations

import uuid

import msgspec

from hvmesh.core import log
from hvmesh.core.bus import micro as bus
from hvmesh.core.bus import notify
from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.models import (
    AgentEvent,
    ConfirmResize,
    Fault,
    Image,
    Migration,
    RequestSpec,
    Selection,
    Server,
    ServerGroup,
    Task,
    action_name,
    now,
)
from hvmesh.core.state import action_log, placement
from hvmesh.core.state.store import Store
from hvmesh.core.state.tasks import publish_task

LOG = log.get_logger(__name__)

AUTO_CONFIRM = "auto-confirm-resize"  # the timer that confirms a resize left unconfirmed
COLD = ("resize", "migrate")


def register(lc: Lifecycle) -> None:
    m = _Moves(lc)
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
    lc.register(
        "evacuate",
        Handlers(run=m.evacuate_run, steps={"rebuild": m.evacuated}, timeout=m.uncertain),
    )
    lc.register_timer(AUTO_CONFIRM, m.auto_confirm)


def _power_on(m: Migration) -> str:
    """A stopped server is moved stopped, as in Nova; any other one comes up running."""
    return "0" if m.old_vm_state == S.STOPPED else "1"


class _Moves:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc

    @property
    def st(self) -> Store:
        return self.lc.st

    # --- shared steps ----------------------------------------------------------------------

    async def _begin(self, task: Task, srv: Server) -> Migration | None:
        """Take the action up: the source's allocation is handed to the migration consumer."""
        action = action_name(task.action)  # type: ignore[arg-type]
        await self.lc.started(srv, action)
        m = srv.migration
        if m is None or srv.host is None:
            await self.lc.fail(srv, action, f"{action}: server {srv.id} has no migration")
            return None
        await placement.move(self.st, m.source_host, srv.id, m.id)
        return m

    async def _begin_with_destination(
        self, task: Task, srv: Server, action: str
    ) -> tuple[Migration, str] | None:
        """Take the move up and claim its destination; None when it ended (no valid host)."""
        m = await self._begin(task, srv)
        if m is None:
            return None
        chosen = await self._destination(srv, m, getattr(task.action, "host", None))
        if chosen.host is None:
            await self._end(srv, action, m.source_host, f"No valid host was found. {chosen.reason}")
            return None
        return m, chosen.host

    async def _destination(self, srv: Server, m: Migration, requested: str | None) -> Selection:
        """A host claimed for the server with the flavor it will have there, or why none."""
        conductor = self.lc.conductor
        spec = RequestSpec(
            server_id=srv.id,
            project=srv.project,
            flavor=m.new_flavor or srv.flavor,
            image_properties=srv.image_properties,
            availability_zone=srv.availability_zone,
            scheduler_hints=srv.scheduler_hints,
            group=await conductor.group_spec(srv),
            ignore_hosts=[m.source_host],
            num_alternates=0,
            requested_host=requested,
        )
        try:
            answer = await bus.call(
                conductor.nc, subjects.SCHED_SELECT, spec, timeout=self.lc.cfg.nats.request_timeout
            )
            reply = msgspec.convert(answer, Selection)
        except errors.ServiceUnavailable as exc:
            return Selection(host=None, reason=f"no scheduler answered: {exc.message}")
        if reply.host is None:
            return reply
        # The scheduler counts its claims as builds in progress; a move's is not one.
        await placement.not_in_progress(self.st, reply.host, srv.id)
        violation = await conductor.group_place(srv.id, spec.group, reply.host)
        if violation is not None:
            await placement.release(self.st, reply.host, srv.id)
            return Selection(host=None, reason=violation)
        return reply

    async def _settle(self, srv: Server, m: Migration, host: str, *others: str | None) -> None:
        """Claims as for a server resting on `host`: its own allocation there, none elsewhere."""
        for h in dict.fromkeys([m.source_host, m.dest_host, *others]):
            if h and h != host:
                await placement.release(self.st, h, srv.id)
                await placement.release(self.st, h, m.id)
        await placement.move(self.st, host, m.id, srv.id)
        await self._group_host(srv, host)

    async def _group_host(self, srv: Server, host: str) -> None:
        group_id = srv.scheduler_hints.group
        if not group_id:
            return

        def put(g: ServerGroup) -> ServerGroup | None:
            if srv.id not in g.placements or g.placements[srv.id] == host:
                return None
            return msgspec.structs.replace(g, placements={**g.placements, srv.id: host})

        await self.st.server_groups.mutate(group_id, put)

    async def _end(
        self,
        srv: Server,
        action: str,
        host: str,
        error: str,
        vm_state: str | None = None,
        power: int | None = None,
        dest: str | None = None,
    ) -> None:
        """End a failed move with the server on `host` (in `vm_state`, else as it was)."""
        m = srv.migration
        if m is None:
            await self.lc.fail(srv, action, error)
            return
        await self._settle(srv, m, host, dest)
        flavor = m.old_flavor if host == m.source_host else m.new_flavor

        def failed(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                host=host,
                flavor=flavor or s.flavor,
                vm_state=vm_state or s.vm_state,
                power_state=power if power is not None else s.power_state,
                migration=None,
            )

        LOG.warning("moves.failed", server=srv.id, action=action, host=host, error=error)
        await self.lc.finish(srv, action, failed, error=error, fault=True)

    async def _image(self, srv: Server) -> Image | None:
        entry = await self.st.images.get(srv.image_id)
        return entry.value if entry else None

    async def uncertain(self, task: Task, srv: Server) -> None:
        """A host did not answer a step: the move's outcome is unknown, so ERROR."""
        action = task.params.get("action", "")
        host = srv.host
        m = srv.migration
        if action == "evacuate" and m is not None:
            host = m.source_host  # the rebuild may never have happened: back where it was
        assert host is not None
        await self._end(
            srv,
            action,
            host,
            f"{action} failed: timed out after {self.lc.cfg.conductor.action_timeout:g}s "
            f"waiting for {task.params.get('step')} on host {task.params.get('host')}",
            vm_state=S.ERROR,
        )

    # --- resize and cold migration ---------------------------------------------------------

    async def cold_run(self, task: Task, srv: Server) -> None:
        action = action_name(task.action)  # type: ignore[arg-type]
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
            {"power_on": _power_on(m)},
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

        done = await self.lc.finish(srv, ev.action, resized)
        window = self.lc.cfg.conductor.resize_confirm_window
        if done is not None and window > 0:
            await self.lc.timer(srv, AUTO_CONFIRM, window, migration=m.id)

    async def auto_confirm(self, task: Task, srv: Server) -> None:
        """Confirm a resize left unconfirmed for the window, as an admin's confirm-resize.

        The request id comes from the migration's, so a timer handled twice (a conductor
        died halfway) accepts and queues the same confirm, which happens once.
        """
        migration_id = task.params.get("migration")
        request_id = f"req-{uuid.uuid5(uuid.NAMESPACE_OID, f'auto-confirm:{migration_id}')}"

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

        written = await self.st.servers.mutate(srv.id, accept)
        if written is None or written.value.request_id != request_id:
            return

        LOG.info("moves.auto_confirm", server=srv.id, migration=migration_id)
        await action_log.start(self.st, srv.id, request_id, "confirm-resize", srv.project, srv.user)
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
        await placement.release(self.st, m.source_host, m.id)

        def confirmed(s: Server) -> Server:
            return msgspec.structs.replace(s, vm_state=m.old_vm_state, migration=None, fault=None)

        await self.lc.finish(srv, ev.action, confirmed)

    async def revert_run(self, task: Task, srv: Server) -> None:
        await self.lc.started(srv, "revert-resize")
        m = srv.migration
        if m is None or m.dest_host is None:
            await self.lc.fail(srv, "revert-resize", f"server {srv.id} has no resize to revert")
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
        await placement.release(self.st, m.dest_host, srv.id)
        await placement.move(self.st, m.source_host, m.id, srv.id)
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
            srv, ev.action, "finish_revert_migration", m.source_host, {"power_on": _power_on(m)}
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
        await placement.release(self.st, m.source_host, m.id)
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
        why = (
            f"live-migrate failed: timed out after {self.lc.cfg.conductor.action_timeout:g}s "
            f"waiting for {task.params.get('step')} on host {task.params.get('host')}"
        )
        if m.status == "preparing":  # the guest has not moved: nothing to undo on the source
            await self._end(srv, "live-migrate", m.source_host, why)
        elif m.status == "error":  # the rollback went unanswered; the guest is on the source
            first = srv.fault.message if srv.fault else "live-migrate failed"
            await self._end(srv, "live-migrate", m.source_host, f"{first}; {why}")
        else:  # the guest may be on either host: as Nova, ERROR where the record says
            assert srv.host is not None
            await self._end(srv, "live-migrate", srv.host, why, S.ERROR)

    # --- evacuation ---------------------------------------------------------------------------

    async def evacuate_run(self, task: Task, srv: Server) -> None:
        action = "evacuate"
        placed = await self._begin_with_destination(task, srv, action)
        if placed is None:
            return
        m, dest = placed
        rebuilding = msgspec.structs.replace(m, dest_host=dest, status="rebuilding")
        written = await self.lc.transition(
            srv, lambda s: msgspec.structs.replace(s, host=dest, migration=rebuilding)
        )
        if written is None:
            await self._settle(srv, m, m.source_host, dest)
            return
        srv = written.value
        await self.lc.send(
            srv, action, "rebuild", dest, {"power_on": _power_on(m)}, await self._image(srv)
        )

    async def evacuated(self, ev: AgentEvent, srv: Server) -> None:
        m = srv.migration
        assert m is not None
        if not ev.ok:  # still on the host that is down, in ERROR: evacuate it again
            await self._end(
                srv, ev.action, m.source_host, f"{ev.action} failed: {ev.message}", S.ERROR
            )
            return
        # The source is down: its instance is removed when its agent starts again.
        await placement.release(self.st, m.source_host, m.id)
        power = ev.power_state

        def evacuated(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                vm_state=S.STOPPED if m.old_vm_state == S.STOPPED else S.ACTIVE,
                power_state=power if power is not None else s.power_state,
                migration=None,
                fault=None,
            )

        await self.lc.finish(srv, ev.action, evacuated)
