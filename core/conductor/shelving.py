"""Shelving: shelve, shelve-offload (at once or after shelved_offload_time), unshelve.

shelve (ACTIVE, STOPPED, PAUSED, SUSPENDED; task shelving) powers the guest off on its
host (skipped when it is already off) and leaves the server SHELVED there, its claim
held. Then, as Nova's `[DEFAULT] shelved_offload_time`, `[conductor] shelved_offload_time`
decides: 0 offloads at once, in the same action (task shelving_offloading); -1 never; N
seconds starts a durable timer that asks for a shelve-offload once it is due, if the
server is still shelved from that same shelve by then.

shelve-offload (SHELVED; task shelving_offloading) destroys the instance on its host,
gives the host's claim and the server's group placement back, and leaves the server
SHELVED_OFFLOADED on no host.

unshelve (task unshelving): a SHELVED server is powered on where it is; a
SHELVED_OFFLOADED one is scheduled afresh (`build.place`: scheduler, claim, group
placement) and spawned on the chosen host. When no host is found, or the spawn fails
or times out, the claim and group placement are given back and the server is
SHELVED_OFFLOADED again, with the error as its fault.

Every failure or timeout rolls the server back to where the step started from, with
its claims as they were then: power-off failed → still in its old state; offload
failed → SHELVED on its host, claim held; power-on failed → SHELVED.
"""

from __future__ import annotations

import msgspec

from hvmesh.core import log
from hvmesh.core.bus import notify
from hvmesh.core.conductor import build
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle
from hvmesh.core.conductor.scheduling import group_unplace
from hvmesh.core.protocol import actions, errors
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.action_requests import ShelveOffload
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.protocol.records import Host, Server
from hvmesh.core.state import action_log, placement
from hvmesh.core.state.tasks import new_request_id, publish_task

LOG = log.get_logger(__name__)

OFFLOAD_TIMER = "shelved-offload"
_OFF = (S.SHUTDOWN, S.CRASHED, S.NOSTATE)


def register(lc: Lifecycle) -> None:
    sh = _Shelving(lc)
    lc.register(
        "shelve",
        Handlers(
            run=sh.shelve,
            steps={"power_off": sh.on_power_off, "destroy": sh.on_destroyed},
            timeout=sh.on_timeout,
        ),
    )
    lc.register(
        "shelve-offload",
        Handlers(run=sh.offload_task, steps={"destroy": sh.on_destroyed}, timeout=sh.on_timeout),
    )
    lc.register(
        "unshelve",
        Handlers(
            run=sh.unshelve,
            steps={"power_on": sh.on_powered_on, "spawn": sh.on_spawned},
            timeout=sh.on_timeout,
        ),
    )
    lc.register_timer(OFFLOAD_TIMER, sh.offload_due)


class _Shelving:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc

    @property
    def conductor(self) -> ConductorContext:
        return self.lc.conductor

    # --- shelve -------------------------------------------------------------------------

    async def shelve(self, task: Task, srv: Server) -> None:
        assert srv.host is not None
        await self.lc.started(srv, "shelve")
        if srv.power_state in _OFF:
            await self.shelved(srv, srv.power_state)  # already off: nothing to power off
            return
        await self.lc.send(srv, "shelve", "power_off", srv.host)

    async def on_power_off(self, ev: AgentEvent, srv: Server) -> None:
        if not ev.ok:
            await self._rollback(srv, "shelve", ev.message, power=ev.power_state)
            return
        await self.shelved(srv, ev.power_state if ev.power_state is not None else S.SHUTDOWN)

    async def shelved(self, srv: Server, power: int) -> None:
        """The guest is off: SHELVED, then offloaded as shelved_offload_time says."""
        delay = self.lc.cfg.conductor.shelved_offload_time

        def to_shelved(s: Server) -> Server:
            return msgspec.structs.replace(s, vm_state=S.SHELVED, power_state=power, fault=None)

        if delay == 0:  # offloaded in the same action, as Nova's shelve does

            def to_offloading(s: Server) -> Server:
                return msgspec.structs.replace(to_shelved(s), task_state=S.SHELVING_OFFLOADING)

            written = await self.lc.transition(srv, to_offloading)
            if written is not None:
                await self.offload(written.value, "shelve")
            return
        if delay > 0:  # set while the shelve still runs; it checks for itself when due
            assert srv.host is not None
            await self.lc.timer(srv, OFFLOAD_TIMER, delay, action="shelve", host=srv.host)
        await self.lc.finish(srv, "shelve", to_shelved)

    # --- shelve-offload -------------------------------------------------------------------

    async def offload_task(self, task: Task, srv: Server) -> None:
        await self.lc.started(srv, "shelve-offload")
        await self.offload(srv, "shelve-offload")

    async def offload(self, srv: Server, action: str) -> None:
        assert srv.host is not None
        await self.lc.send(srv, action, "destroy", srv.host)

    async def on_destroyed(self, ev: AgentEvent, srv: Server) -> None:
        action = ev.action
        if not ev.ok:
            await self._rollback(srv, action, ev.message, vm_state=S.SHELVED, power=ev.power_state)
            return
        host = ev.host
        # The claim and the group placement go first: the server shows its task until
        # the last write, so no one sees it offloaded with its claim still held.
        await placement.release(self.lc.st, host, srv.id)
        await group_unplace(self.lc.st, srv)

        def offloaded(s: Server) -> Server:
            return msgspec.structs.replace(
                s, vm_state=S.SHELVED_OFFLOADED, host=None, power_state=S.NOSTATE, fault=None
            )

        await self.lc.finish(srv, action, offloaded)
        LOG.info("shelving.offloaded", server=srv.id, host=host)

    async def offload_due(self, task: Task, srv: Server) -> None:
        """The shelved_offload_time timer: ask for a shelve-offload, as the API would.

        Only if the server still rests SHELVED on the same host from the shelve that set
        it: any later action (an unshelve, perhaps a shelve again) makes it stale.
        """
        host = task.params.get("host")
        if srv.vm_state != S.SHELVED or srv.task_state is not None or srv.host != host:
            return
        if await self._latest_action(srv.id) != task.request_id:
            return

        request_id = new_request_id()

        def accept(s: Server) -> Server | None:
            try:
                rule = actions.check("shelve-offload", s, True, "")
            except errors.HvmeshError:
                return None
            if s.host != host:
                return None
            return msgspec.structs.replace(
                s, task_state=rule.task_state, request_id=request_id, updated_at=now()
            )

        written = await self.lc.st.servers.mutate(srv.id, accept)
        if written is None or written.value.request_id != request_id:
            return
        await action_log.start(
            self.lc.st, srv.id, request_id, "shelve-offload", srv.project, srv.user
        )
        await notify.updated(self.conductor.nc, srv, written.value)
        await publish_task(
            self.conductor.js,
            Task(
                kind="action",
                server_id=srv.id,
                request_id=request_id,
                action=ShelveOffload(id=srv.id),
            ),
        )
        LOG.info("shelving.offload_due", server=srv.id, host=host, request=request_id)

    async def _latest_action(self, server_id: str) -> str | None:
        """The request id of the server's newest action that went through the conductor."""
        for a in await action_log.for_server(self.lc.st, server_id):
            rule = actions.RULES.get(a.action)
            if rule is not None and rule.task_state is not None:
                return a.request_id
        return None

    # --- unshelve ---------------------------------------------------------------------------

    async def unshelve(self, task: Task, srv: Server) -> None:
        await self.lc.started(srv, "unshelve")
        if srv.vm_state == S.SHELVED:
            assert srv.host is not None
            await self.lc.send(srv, "unshelve", "power_on", srv.host)
            return
        await self.unshelve_offloaded(srv)

    async def on_powered_on(self, ev: AgentEvent, srv: Server) -> None:
        if not ev.ok:
            await self._rollback(srv, "unshelve", ev.message, power=ev.power_state)
            return
        await self._active(srv, ev.power_state)

    async def unshelve_offloaded(self, srv: Server) -> None:
        """Schedule afresh (no earlier build's retries or alternates), claim, spawn."""
        fresh = msgspec.structs.replace(srv, attempt=0, retry_hosts=[], alternates=[], host=None)
        try:
            chosen = await build.place(self.conductor, fresh)
        except errors.ServiceUnavailable as exc:
            await self._rollback(srv, "unshelve", f"no scheduler answered: {exc.message}")
            return
        except errors.HvmeshError as exc:  # the scheduler failed the request (a plugin raised)
            await self._rollback(srv, "unshelve", exc.message)
            return
        host = chosen.host
        if host is None:
            await self._rollback(srv, "unshelve", f"No valid host was found. {chosen.reason}")
            return

        def to_host(s: Server) -> Server:
            return msgspec.structs.replace(s, host=host)

        written = await self.lc.transition(srv, to_host)
        if written is None:  # deleted or reset meanwhile: give back what place() took
            await placement.release(self.lc.st, host, srv.id)
            await group_unplace(self.lc.st, srv)
            return
        srv = written.value
        image = await self.lc.st.images.get(srv.image_id)
        await self.lc.send(srv, "unshelve", "spawn", host, image=image.value if image else None)

    async def on_spawned(self, ev: AgentEvent, srv: Server) -> None:
        if not ev.ok:
            await self._unspawned(srv, ev.host, ev.message)
            return
        # The scheduler counted the claim as a build in progress: it no longer is.
        await self.lc.st.hosts.mutate(ev.host, lambda h: _not_in_progress(h, srv.id))
        await self._active(srv, ev.power_state, launched=True)

    async def _unspawned(self, srv: Server, host: str, message: str) -> None:
        """A spawn on the new host failed: everything place() took goes back."""
        await placement.release(self.lc.st, host, srv.id)
        await group_unplace(self.lc.st, srv)
        await self._rollback(srv, "unshelve", message, vm_state=S.SHELVED_OFFLOADED, host=None)

    async def _active(self, srv: Server, power: int | None, launched: bool = False) -> None:
        def to_active(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                vm_state=S.ACTIVE,
                power_state=power if power is not None else S.RUNNING,
                launched_at=now() if launched else s.launched_at,
                fault=None,
            )

        await self.lc.finish(srv, "unshelve", to_active)

    # --- failures ---------------------------------------------------------------------------

    async def on_timeout(self, task: Task, srv: Server) -> None:
        action = task.params.get("action", "")
        step = task.params.get("step", "")
        host = task.params.get("host", "")
        message = self.lc.timeout_reason(task)
        if step == "spawn":
            await self._unspawned(srv, host, message)
        elif step == "destroy":
            await self._rollback(srv, action, message, vm_state=S.SHELVED)
        else:  # power_off (shelve) or power_on (unshelve): back where it started
            await self._rollback(srv, action, message)

    async def _rollback(
        self,
        srv: Server,
        action: str,
        message: str,
        *,
        vm_state: str | None = None,
        power: int | None = None,
        **fields: object,
    ) -> None:
        def back(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                vm_state=vm_state or s.vm_state,
                power_state=power if power is not None else s.power_state,
                **fields,
            )

        await self.lc.finish(srv, action, back, error=f"{action} failed: {message}", fault=True)


def _not_in_progress(h: Host, server_id: str) -> Host | None:
    if server_id not in h.in_progress:
        return None
    return msgspec.structs.replace(h, in_progress=[s for s in h.in_progress if s != server_id])
