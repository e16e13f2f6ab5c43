"""The conductor: takes tasks from the durable queue, drives them, applies agents' events.

Every step is a compare-and-set on the server record, checked against the state the
step expects, so a task or event handled twice (after a conductor dies and another
takes over) changes nothing the second time. Tasks are acknowledged only once their
effect is written, so a conductor killed mid-task leaves the task to the next one.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hvmesh.core import log
from hvmesh.core.bus import micro as bus
from hvmesh.core.bus import notify
from hvmesh.core.bus.worker import PullWorker
from hvmesh.core.conductor import interfaces, moves, power_actions, power_sync, shelving
from hvmesh.core.conductor.lifecycle import Lifecycle
from hvmesh.core.config import Config
from hvmesh.core.protocol import errors, states, subjects
from hvmesh.core.protocol.models import (
    AgentEvent,
    Fault,
    GroupSpec,
    Host,
    RequestSpec,
    Selection,
    Server,
    ServerGroup,
    Task,
    Work,
    encode,
    now,
)
from hvmesh.core.state import action_log, placement, ports
from hvmesh.core.state.store import (
    CasConflict,
    Entry,
    Store,
)
from hvmesh.core.state.tasks import publish_task

LOG = log.get_logger(__name__)

GROUP_RETRIES = 5  # schedule-and-check rounds when group members race for a host
SCHEDULER_RETRY_DELAY = 2.0  # seconds before a task that found no scheduler is retried


class Conductor:
    def __init__(self, nc: Client, cfg: Config) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = cfg
        self.store: Store | None = None
        self._workers: list[PullWorker[Any]] = []
        self.lifecycle = Lifecycle(self)
        for module in ACTION_MODULES:
            module.register(self.lifecycle)

    @property
    def st(self) -> Store:
        assert self.store is not None
        return self.store

    async def start(self) -> None:
        self.store = await Store(self.js).open()
        tasks = await self.js.pull_subscribe(
            subjects.TASKS_ALL,
            durable=subjects.CONDUCTOR_TASKS_DURABLE,
            stream=subjects.TASKS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.cfg.conductor.task_ack_wait,
                max_ack_pending=self.cfg.conductor.workers * 8,
            ),
        )
        events = await self.js.pull_subscribe(
            subjects.EVENTS_ALL,
            durable=subjects.CONDUCTOR_EVENTS_DURABLE,
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.cfg.conductor.task_ack_wait,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=self.cfg.conductor.workers * 8,
            ),
        )
        timers = await self.js.pull_subscribe(
            subjects.TIMERS_ALL,
            durable=subjects.CONDUCTOR_TIMERS_DURABLE,
            stream=subjects.TIMERS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.cfg.conductor.task_ack_wait,
                max_ack_pending=-1,  # timers wait their turn unacknowledged: no limit
            ),
        )
        n = self.cfg.conductor.workers
        self._workers = [
            PullWorker("conductor-tasks", tasks, Task, self.handle_task, n),
            PullWorker("conductor-events", events, AgentEvent, self.handle_event, n),
            PullWorker("conductor-timers", timers, Task, self.handle_timer, n),
        ]
        for worker in self._workers:
            worker.start()
        LOG.info("conductor.started")

    async def stop(self) -> None:
        for worker in self._workers:
            await worker.stop()

    # --- tasks --------------------------------------------------------------------------------

    async def handle_task(self, task: Task, msg: Msg) -> None:
        if task.kind == "build":
            done = await self.build(task)
        elif task.kind == "delete":
            done = await self.delete(task)
        elif task.kind == "action":
            await self.lifecycle.on_task(task)
            done = True
        else:
            LOG.error("conductor.unknown_task", kind=task.kind)
            done = True
        if done:
            await msg.ack()
        else:
            await msg.nak(delay=SCHEDULER_RETRY_DELAY)

    async def handle_timer(self, task: Task, msg: Msg) -> None:
        """A timer runs when due; until then it goes back to wait (a delayed redelivery)."""
        wait = task.not_before - now()
        if wait > 0:
            await msg.nak(delay=wait)
            return
        if task.timer == "spawn-timeout":
            await self.spawn_timed_out(task)
        else:
            await self.lifecycle.on_timer(task)
        await msg.ack()

    async def build(self, task: Task) -> bool:
        """Schedule and hand a build to its host. False: try again later."""
        if task.server_ids:
            return await self.build_reservation(task)
        entry = await self.st.servers.get(task.server_id)
        if entry is None:
            return True
        srv = entry.value
        if srv.vm_state != states.BUILDING or srv.attempt != task.attempt:
            return True  # done, deleted or superseded by a later attempt
        if srv.task_state == states.SPAWNING and srv.host:
            await self.send_spawn(srv)  # resumed after a crash: handing over again is harmless
            return True
        if srv.task_state != states.SCHEDULING:
            return True
        try:
            chosen = await self.place(srv)
        except errors.ServiceUnavailable as exc:
            LOG.warning("conductor.scheduler_unavailable", server=srv.id, error=exc.message)
            return False
        if chosen.host is None:
            await self.fail_build(srv.id, task.attempt, f"No valid host was found. {chosen.reason}")
            return True
        await self.start_spawn(srv, chosen)
        return True

    async def build_reservation(self, task: Task) -> bool:
        """A multi-create: place every server, or at least min_count of them, or none.

        Claims are taken one server after another (each sees the others' in its group);
        only when enough are held do any of them start spawning. Short of min_count,
        every claim is given back and every server ends in ERROR. A task resumed after a
        crash finds its claims already held: the scheduler answers those idempotently.
        """
        pending: list[Server] = []
        spawning: list[Server] = []
        for server_id in task.server_ids:
            entry = await self.st.servers.get(server_id)
            if entry is None:
                continue
            s = entry.value
            if s.vm_state != states.BUILDING or s.attempt != task.attempt:
                continue
            if s.task_state == states.SPAWNING and s.host:
                spawning.append(s)
            elif s.task_state == states.SCHEDULING:
                pending.append(s)
        placed: list[tuple[Server, Selection]] = []
        reason = ""
        try:
            for s in pending:
                chosen = await self.place(s)
                if chosen.host is None:
                    reason = chosen.reason
                    break
                placed.append((s, chosen))
        except errors.ServiceUnavailable as exc:
            LOG.warning("conductor.scheduler_unavailable", server=task.server_id, error=exc.message)
            return False  # the claims taken so far are found again on the retry
        unplaced = pending[len(placed) :]
        if unplaced and len(spawning) + len(placed) < task.min_count:
            for s, chosen in placed:
                assert chosen.host is not None
                await placement.release(self.st, chosen.host, s.id)
                await self.group_unplace(s)
            message = (
                "No valid host was found. There are not enough hosts available: "
                f"{len(spawning) + len(placed)} of min_count {task.min_count} placed. {reason}"
            )
            for s in pending:
                await self.fail_build(s.id, task.attempt, message)
            return True
        for s in unplaced:  # above min_count: the ones that found no room are not created
            await self.discard(s)
        for s, chosen in placed:
            await self.start_spawn(s, chosen)
        for s in spawning:
            await self.send_spawn(s)
        return True

    async def place(self, srv: Server) -> Selection:
        """A claimed host for the server: an alternate from its last selection, or a new one.

        On a reschedule the alternates the scheduler offered the first time are tried
        first, as Nova's conductor does: a claim on one that is still up and still has
        room saves asking the scheduler again. Raises ServiceUnavailable when no scheduler
        answers.
        """
        if srv.attempt > 0:
            chosen = await self.claim_alternate(srv)
            if chosen is not None:
                return chosen
        spec = RequestSpec(
            server_id=srv.id,
            project=srv.project,
            flavor=srv.flavor,
            image_properties=srv.image_properties,
            availability_zone=srv.availability_zone,
            scheduler_hints=srv.scheduler_hints,
            ignore_hosts=list(srv.retry_hosts),
            num_alternates=max(self.cfg.conductor.max_attempts - 1, 0),
        )
        for _ in range(GROUP_RETRIES):
            spec.group = await self.group_spec(srv)
            reply = await bus.call(
                self.nc, subjects.SCHED_SELECT, spec, timeout=self.cfg.nats.request_timeout
            )
            selection = msgspec.convert(reply, Selection)
            if selection.host is None:
                return selection
            violation = await self.group_place(srv.id, spec.group, selection.host)
            if violation is None:
                return selection
            # Another member's claim landed first: give ours back and choose again.
            LOG.info("conductor.group_conflict", server=srv.id, host=selection.host, why=violation)
            await placement.release(self.st, selection.host, srv.id)
            spec.ignore_hosts.append(selection.host)
        return Selection(host=None, reason="Server group policy conflicts.")

    async def claim_alternate(self, srv: Server) -> Selection | None:
        """Claim the first of the server's alternates that is up and still fits, if any."""
        untried = [h for h in srv.alternates if h not in srv.retry_hosts]
        resources = srv.flavor.resources()
        for i, host in enumerate(untried):
            beat = await self.st.heartbeats.get(host)
            if beat is None or beat.value.at < now() - self.cfg.DEFAULT.service_down_time:
                continue
            result = await placement.claim(self.st, host, srv.id, resources, build=True)
            if not result.claimed:
                continue
            violation = await self.group_place(srv.id, await self.group_spec(srv), host)
            if violation is not None:
                await placement.release(self.st, host, srv.id)
                continue
            LOG.info("conductor.alternate_claimed", server=srv.id, host=host)
            return Selection(host=host, alternates=untried[i + 1 :])
        return None

    async def start_spawn(self, srv: Server, chosen: Selection) -> None:
        """Record the claimed host on the server and hand the spawn to its agent."""
        host = chosen.host
        assert host is not None
        attempt = srv.attempt

        def to_spawning(s: Server) -> Server | None:
            if (
                s.vm_state != states.BUILDING
                or s.task_state != states.SCHEDULING
                or s.attempt != attempt
            ):
                return None
            return msgspec.structs.replace(
                s,
                host=host,
                task_state=states.SPAWNING,
                alternates=list(chosen.alternates),
                updated_at=now(),
            )

        written = await self.st.servers.mutate(srv.id, to_spawning)
        if (
            written is None
            or written.value.host != host
            or written.value.task_state != states.SPAWNING
        ):
            # Deleted or moved on while we scheduled: give the claim back.
            await placement.release(self.st, host, srv.id)
            return
        LOG.info("conductor.scheduled", server=srv.id, host=host, attempt=attempt)
        await self.send_spawn(written.value)

    async def discard(self, srv: Server) -> None:
        """Remove a multi-create's server that found no room (above its min_count)."""
        entry = await self.st.servers.get(srv.id)
        if entry is None or entry.value.task_state != states.SCHEDULING:
            return
        try:
            await self.st.servers.delete(srv.id, revision=entry.revision)
        except CasConflict:
            return  # changed meanwhile (a delete request): that path finishes it
        await self.group_unplace(srv, leave=True)
        await ports.let_go_all(self.st, srv)
        LOG.info("conductor.discarded", server=srv.id, reservation=srv.reservation_id)

    async def group_spec(self, srv: Server) -> GroupSpec | None:
        """The server's group as the scheduler needs it: policy and the others' hosts."""
        group_id = srv.scheduler_hints.group
        entry = await self.st.server_groups.get(group_id) if group_id else None
        if entry is None:
            return None
        g = entry.value
        return GroupSpec(
            id=g.id,
            policy=g.policy,
            member_hosts=[h for m, h in g.placements.items() if m != srv.id],
            max_server_per_host=g.max_server_per_host,
        )

    async def group_place(self, server_id: str, group: GroupSpec | None, host: str) -> str | None:
        """Record the server's host in its group, if the group's hard policy allows it.

        Two members scheduled at once can pick conflicting hosts. Their placements are
        compare-and-set writes of the one group record, so the later writer sees the
        earlier placement and backs off (None: placed; else why not).
        """
        if group is None:
            return None
        verdict: list[str] = []

        def place(g: ServerGroup) -> ServerGroup | None:
            verdict.clear()
            others = [h for m, h in g.placements.items() if m != server_id]
            if g.policy == "affinity" and any(h != host for h in others):
                verdict.append(f"affinity group {g.id} is on {others[0]}")
                return None
            if g.policy == "anti-affinity" and others.count(host) >= g.max_server_per_host:
                verdict.append(f"anti-affinity group {g.id} is full on {host}")
                return None
            return msgspec.structs.replace(g, placements={**g.placements, server_id: host})

        await self.st.server_groups.mutate(group.id, place)
        return verdict[0] if verdict else None

    async def group_unplace(self, srv: Server, leave: bool = False) -> None:
        """Forget where the server was placed in its group (and with `leave`, the membership)."""
        group_id = srv.scheduler_hints.group
        if not group_id:
            return

        def drop(g: ServerGroup) -> ServerGroup | None:
            if srv.id not in g.placements and not (leave and srv.id in g.members):
                return None
            placements = {m: h for m, h in g.placements.items() if m != srv.id}
            members = [m for m in g.members if m != srv.id] if leave else g.members
            return msgspec.structs.replace(g, placements=placements, members=members)

        await self.st.server_groups.mutate(group_id, drop)

    async def send_spawn(self, srv: Server) -> None:
        assert srv.host is not None
        image_entry = await self.st.images.get(srv.image_id)
        work = Work(
            kind="spawn",
            server_id=srv.id,
            host=srv.host,
            attempt=srv.attempt,
            server=srv,
            image=image_entry.value if image_entry else None,
        )
        await self.js.publish(
            subjects.work(srv.host),
            encode(work),
            headers={"Nats-Msg-Id": f"{srv.id}:spawn:{srv.attempt}"},
        )
        timer = Task(
            kind="timer",
            server_id=srv.id,
            attempt=srv.attempt,
            timer="spawn-timeout",
            not_before=now() + self.cfg.conductor.action_timeout,
            params={"host": srv.host},
        )
        await self.js.publish(
            subjects.timer("spawn-timeout"),
            encode(timer),
            headers={"Nats-Msg-Id": f"{srv.id}:spawn-timeout:{srv.attempt}"},
        )

    async def spawn_timed_out(self, task: Task) -> None:
        """A spawn whose host never answered fails like any failed spawn: rescheduled."""
        entry = await self.st.servers.get(task.server_id)
        s = entry.value if entry else None
        host = task.params.get("host")
        if s is None or s.task_state != states.SPAWNING or s.attempt != task.attempt:
            return
        if s.host != host or host is None:
            return
        LOG.warning("conductor.spawn_timeout", server=s.id, host=host)
        await self.on_spawned(
            AgentEvent(
                kind="spawn",
                server_id=s.id,
                host=host,
                ok=False,
                attempt=task.attempt,
                message=f"timed out after {self.cfg.conductor.action_timeout:g}s "
                f"waiting for host {host}",
            )
        )

    async def fail_build(self, server_id: str, attempt: int, message: str) -> None:
        def to_error(s: Server) -> Server | None:
            if s.vm_state != states.BUILDING or s.attempt != attempt:
                return None
            return msgspec.structs.replace(
                s,
                vm_state=states.ERROR,
                task_state=None,
                host=None,
                fault=Fault(code=500, message=message),
                updated_at=now(),
            )

        written = await self.end_build(server_id, to_error, message)
        if written is not None:
            await self.group_unplace(written.value)
        LOG.info("conductor.build_failed", server=server_id, reason=message)

    async def end_build(
        self, server_id: str, change: Any, error: str | None = None
    ) -> Entry[Server] | None:
        """The build's last write (ACTIVE or ERROR); it also closes the "create" action."""
        before: list[Server] = []

        def last(s: Server) -> Server | None:
            before.clear()
            new = change(s)
            if new is None or new.vm_state == states.BUILDING:
                return new  # not the last write: a reschedule
            before.append(s)
            return msgspec.structs.replace(new, request_id=None)

        written = await self.st.servers.mutate(server_id, last)
        if written is None or not before:
            return written
        old = before[0]
        if error is None and written.value.vm_state == states.ERROR and written.value.fault:
            error = written.value.fault.message
        if old.request_id:
            await action_log.step(
                self.st, server_id, old.request_id, "compute_spawn", host=old.host, error=error
            )
            await action_log.finish(self.st, server_id, old.request_id, error)
        await notify.updated(self.nc, old, written.value)
        event = "instance.create.error" if error else "instance.create.end"
        await notify.send(self.nc, event, written.value, error=error)
        return written

    async def delete(self, task: Task) -> bool:
        entry = await self.st.servers.get(task.server_id)
        if entry is None:
            return True
        srv = entry.value
        if srv.task_state != states.DELETING:
            return True
        # Every host that may hold the instance: its own, and both ends of a move.
        hosts = [h for h in dict.fromkeys([srv.host, *_move_hosts(srv)]) if h]
        up = [h for h in hosts if await self.host_up(h)]
        if not up:
            # No host that holds it answers: delete here, as Nova's local delete does.
            # A host that comes back removes the instance when it reconciles.
            await self.finish_delete(srv.id, None)
            return True
        for host in up:
            work = Work(kind="destroy", server_id=srv.id, host=host, request_id=task.request_id)
            await self.js.publish(
                subjects.work(host),
                encode(work),
                headers={"Nats-Msg-Id": f"{srv.id}:destroy:{task.request_id}:{host}"},
            )
        return True

    async def host_up(self, host: str) -> bool:
        beat = await self.st.heartbeats.get(host)
        return beat is not None and beat.value.at >= now() - self.cfg.DEFAULT.service_down_time

    async def finish_delete(self, server_id: str, host: str | None) -> None:
        """Give back every claim the server holds, then remove its record."""
        if host:
            await placement.release(self.st, host, server_id)
        entry = await self.st.servers.get(server_id)
        if entry is None:
            return
        srv = entry.value
        for h in dict.fromkeys([srv.host, *_move_hosts(srv)]):
            if h and h != host:
                await placement.release(self.st, h, server_id)
        if srv.migration is not None:  # the source's claim, held under the migration's id
            for h in _move_hosts(srv):
                await placement.release(self.st, h, srv.migration.id)
        await self.group_unplace(srv, leave=True)
        await ports.let_go_all(self.st, srv)
        await self.st.servers.delete(server_id)
        if srv.request_id:
            await action_log.finish(self.st, server_id, srv.request_id)
        await notify.send(self.nc, "instance.delete.end", srv)
        LOG.info("conductor.deleted", server=server_id)

    # --- agent events -----------------------------------------------------------------------

    async def handle_event(self, event: AgentEvent, msg: Msg) -> None:
        if event.action:
            await self.lifecycle.on_event(event)
        elif event.kind == "spawn":
            await self.on_spawned(event)
        elif event.kind == "destroy":
            await self.on_destroyed(event)
        elif event.kind == "power":
            await power_sync.apply(self, event)
        await msg.ack()

    async def on_spawned(self, ev: AgentEvent) -> None:
        def expected(s: Server) -> bool:
            return (
                s.vm_state == states.BUILDING
                and s.task_state == states.SPAWNING
                and s.host == ev.host
                and s.attempt == ev.attempt
            )

        if ev.ok:

            def to_active(s: Server) -> Server | None:
                if not expected(s):
                    return None
                return msgspec.structs.replace(
                    s,
                    vm_state=states.ACTIVE,
                    task_state=None,
                    power_state=ev.power_state if ev.power_state is not None else states.RUNNING,
                    launched_at=now(),
                    updated_at=now(),
                )

            # The host stops counting the build first, so no one sees an ACTIVE server
            # still in progress; a redelivered event repeats both steps harmlessly.
            await self.st.hosts.mutate(ev.host, lambda h: _build_finished(h, ev.server_id))
            entry = await self.st.servers.get(ev.server_id)
            if entry is not None and expected(entry.value):  # its ports are up, as Neutron's
                await ports.set_status(self.st, entry.value, "ACTIVE")
            await self.end_build(ev.server_id, to_active)
            LOG.info("conductor.active", server=ev.server_id, host=ev.host)
            return

        max_attempts = self.cfg.conductor.max_attempts

        def to_retry(s: Server) -> Server | None:
            if not expected(s):
                return None
            retry_hosts = [*s.retry_hosts, ev.host]
            if ev.attempt + 1 >= max_attempts:
                return msgspec.structs.replace(
                    s,
                    vm_state=states.ERROR,
                    task_state=None,
                    host=None,
                    attempt=ev.attempt + 1,
                    retry_hosts=retry_hosts,
                    fault=Fault(
                        code=500,
                        message="Exceeded maximum number of retries. Exhausted all hosts "
                        f"available for retrying build failures. Last error: {ev.message}",
                    ),
                    updated_at=now(),
                )
            return msgspec.structs.replace(
                s,
                task_state=states.SCHEDULING,
                host=None,
                attempt=ev.attempt + 1,
                retry_hosts=retry_hosts,
                updated_at=now(),
            )

        # Give the failed host's claim back first, so no one ever sees the server moved on
        # (or in ERROR) while the claim is still held. A failed spawn's host is never
        # chosen again for this server, so releasing it is right even on a redelivery.
        await placement.release(self.st, ev.host, ev.server_id, failed_build=True)
        written = await self.end_build(ev.server_id, to_retry)
        if written is not None and written.value.host is None:
            await self.group_unplace(written.value)  # its next host is chosen afresh
        # Re-queue whenever the record shows this failure was taken, also on a redelivered
        # event whose first handling died halfway: the task's message id makes it idempotent.
        if written is None:
            return
        s = written.value
        taken = s.attempt == ev.attempt + 1 and ev.host in s.retry_hosts
        if taken and s.vm_state == states.BUILDING and s.task_state == states.SCHEDULING:
            LOG.info("conductor.rescheduling", server=s.id, failed_host=ev.host, attempt=s.attempt)
            await publish_task(self.js, Task(kind="build", server_id=s.id, attempt=s.attempt))

    async def on_destroyed(self, ev: AgentEvent) -> None:
        if ev.ok:
            await self.finish_delete(ev.server_id, ev.host)
            return

        def to_error(s: Server) -> Server | None:
            if s.task_state != states.DELETING:
                return None
            return msgspec.structs.replace(
                s,
                vm_state=states.ERROR,
                task_state=None,
                fault=Fault(code=500, message=f"Delete failed on {ev.host}: {ev.message}"),
                updated_at=now(),
            )

        await self.st.servers.mutate(ev.server_id, to_error)


# Each registers its actions with the conductor's Lifecycle.
ACTION_MODULES = [power_actions, moves, shelving, interfaces]


def _move_hosts(srv: Server) -> list[str]:
    m = srv.migration
    return [h for h in (m.source_host, m.dest_host) if h] if m is not None else []


def _build_finished(host: Host, server_id: str) -> Host | None:
    """A spawn worked: the build is no longer in progress, and failures start over."""
    if not host.failed_builds and server_id not in host.in_progress:
        return None
    in_progress = [s for s in host.in_progress if s != server_id]
    return msgspec.structs.replace(host, failed_builds=0, in_progress=in_progress)
