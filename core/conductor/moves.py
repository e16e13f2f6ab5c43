"""Moves: the steps every kind of move shares, and evacuation.

While a move runs, the source host's allocation is held under the migration's id (as
Nova's migration consumer) and the destination's under the server's id, claimed by the
scheduler with the flavor the server will have there. The source is never a candidate,
except for a resize with `[conductor] allow_resize_to_same_host` on a host whose driver
resizes in place (COMPUTE_SAME_HOST_COLD_MIGRATE), as Nova's option of that name; there
both allocations are on the one host until the resize is confirmed or reverted. An
admin's chosen target must still pass every filter.

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

Resize and cold migration are in resize.py, live migration in live_migration.py.

A step that fails before anything irreversible happened leaves the server as it was,
with a fault. A step that fails, or whose host does not answer, once the guest may be
half moved leaves it in ERROR, as Nova does. Either way the claims are settled for the
host the server record names: its own allocation there, none elsewhere, no migration
consumer left, so the audit is clean.
"""

from __future__ import annotations

import msgspec

from hvmesh.core import log
from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle
from hvmesh.core.conductor.scheduling import select
from hvmesh.core.protocol import actions, errors
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.action_requests import action_name
from hvmesh.core.protocol.messages import AgentEvent, RequestSpec, Selection, Task
from hvmesh.core.protocol.records import Flavor, Image, Migration, Server, ServerGroup
from hvmesh.core.state import placement

LOG = log.get_logger(__name__)


def register(lc: Lifecycle) -> None:
    e = _Evacuation(lc)
    lc.register(
        "evacuate",
        Handlers(run=e.evacuate_run, steps={"rebuild": e.evacuated}, timeout=e.uncertain),
    )


def power_on(m: Migration) -> str:
    """A stopped server is moved stopped, as in Nova; any other one comes up running."""
    return "0" if m.old_vm_state == S.STOPPED else "1"


class MoveSteps:
    """The steps every move shares; each kind of move is a subclass."""

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc

    # --- shared steps ----------------------------------------------------------------------

    async def _begin(self, task: Task, srv: Server) -> Migration | None:
        """Take the action up: the source's allocation is handed to the migration consumer."""
        assert task.action is not None  # an action task carries its action
        action = action_name(task.action)
        await self.lc.started(srv, action)
        m = srv.migration
        if m is None or srv.host is None:
            await self.lc.fail(srv, action, f"{action}: server {srv.id} has no migration")
            return None
        await placement.move(self.lc.st, m.source_host, srv.id, m.id)
        return m

    async def _begin_with_destination(
        self, task: Task, srv: Server, action: str
    ) -> tuple[Migration, str] | None:
        """Take the move up and claim its destination; None when it ended (no valid host, or
        the scheduler failed: the server stays where it was, with the fault)."""
        m = await self._begin(task, srv)
        if m is None:
            return None
        chosen = await self._destination(srv, m, getattr(task.action, "host", None), action)
        if chosen.host is None:
            await self._end(srv, action, m.source_host, chosen.reason)
            return None
        return m, chosen.host

    async def _destination(
        self, srv: Server, m: Migration, requested: str | None, action: str
    ) -> Selection:
        """A host claimed for the server with the flavor it will have there, or why none
        (the fault's whole message).

        A move that needs a driver capability (live migration, evacuation) asks for the
        capability's trait, so the destination's driver can do it too.
        """
        spec = RequestSpec(
            server_id=srv.id,
            project=srv.project,
            flavor=needing_capability(m.new_flavor or srv.flavor, action),
            image_properties=srv.image_properties,
            availability_zone=srv.availability_zone,
            scheduler_hints=srv.scheduler_hints,
            ignore_hosts=[] if await self._in_place(action, m) else [m.source_host],
            num_alternates=0,
            requested_host=requested,
        )
        try:
            reply, violation = await select(self.lc.conductor, srv, spec, move=True)
        except errors.ServiceUnavailable as exc:
            why = f"No valid host was found. no scheduler answered: {exc.message}"
            return Selection(host=None, reason=why)
        except errors.HvmeshError as exc:  # the scheduler failed the request (a plugin raised)
            return Selection(host=None, reason=exc.message)
        if violation is not None:
            return Selection(host=None, reason=f"No valid host was found. {violation}")
        if reply.host is None:
            return Selection(host=None, reason=f"No valid host was found. {reply.reason}")
        return reply

    async def _in_place(self, action: str, m: Migration) -> bool:
        """Whether a resize may stay on its source host (see the module's docstring)."""
        if action != "resize" or not self.lc.cfg.conductor.allow_resize_to_same_host:
            return False
        entry = await self.lc.st.hosts.get(m.source_host)
        trait = actions.CAPABILITY_TRAITS["supports_migrate_to_same_host"]
        return entry is not None and trait in entry.value.traits

    async def _settle(self, srv: Server, m: Migration, host: str, *others: str | None) -> None:
        """Claims as for a server resting on `host`: its own allocation there, none elsewhere."""
        for h in dict.fromkeys([m.source_host, m.dest_host, *others]):
            if h and h != host:
                await placement.release(self.lc.st, h, srv.id)
                await placement.release(self.lc.st, h, m.id)
        await placement.move(self.lc.st, host, m.id, srv.id)
        await self._group_host(srv, host)

    async def _group_host(self, srv: Server, host: str) -> None:
        group_id = srv.scheduler_hints.group
        if not group_id:
            return

        def put(g: ServerGroup) -> ServerGroup | None:
            if srv.id not in g.placements or g.placements[srv.id] == host:
                return None
            return msgspec.structs.replace(g, placements={**g.placements, srv.id: host})

        await self.lc.st.server_groups.mutate(group_id, put)

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
        entry = await self.lc.st.images.get(srv.image_id)
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
            f"{action} failed: {self.lc.timeout_reason(task)}",
            vm_state=S.ERROR,
        )


class _Evacuation(MoveSteps):
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
            srv, action, "rebuild", dest, {"power_on": power_on(m)}, await self._image(srv)
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
        await placement.release(self.lc.st, m.source_host, m.id)
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


def needing_capability(flavor: Flavor, action: str) -> Flavor:
    """`flavor`, requiring the trait of the driver capability `action` needs (if any)."""
    capability = actions.ACTION_CAPABILITIES.get(action)
    if capability is None:
        return flavor
    trait = actions.capability_trait(capability)
    return msgspec.structs.replace(
        flavor, extra_specs={**flavor.extra_specs, f"trait:{trait}": "required"}
    )
