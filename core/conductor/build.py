"""Builds: placing a server (scheduler, claims, alternates), spawning it, and the spawn's outcome.

A failed spawn gives its host's claim back and queues the build again on another host
(a reschedule), until `[conductor] max_attempts` is reached. A multi-create places all
its servers, or at least min_count of them, before any of them spawns.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.bus import notify
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.scheduling import group_place, group_spec, group_unplace, select
from hvmesh.core.conductor.work_route import work_subject
from hvmesh.core.protocol import errors, states, subjects
from hvmesh.core.protocol.base import encode, now
from hvmesh.core.protocol.messages import AgentEvent, RequestSpec, Selection, Task, Work
from hvmesh.core.protocol.records import Fault, Host, Server
from hvmesh.core.state import action_log, leases, liveness, placement, ports, quotas
from hvmesh.core.state.store import CasConflict, Entry
from hvmesh.core.state.tasks import publish_task

LOG = log.get_logger(__name__)

GROUP_RETRIES = 5  # schedule-and-check rounds when group members race for a host
# While no scheduler answers, a build asks again after 1 s, then after as long as it has
# waited so far (doubling), at most 10 s apart, until [conductor] scheduler_deadline.
SCHEDULER_WAIT_FIRST = 1.0
SCHEDULER_WAIT_MAX = 10.0


def scheduler_wait(ctx: ConductorContext, task: Task) -> float | None:
    """Seconds before a build that found no scheduler asks again; None once its deadline
    has passed. The deadline runs from the task's creation: the API's for a first
    attempt, the reschedule's for a later one, kept across conductor restarts."""
    waited = max(now() - task.created_at, 0.0)
    left = ctx.cfg.conductor.scheduler_deadline - waited
    if left <= 0:
        return None
    return min(max(waited, SCHEDULER_WAIT_FIRST), SCHEDULER_WAIT_MAX, left)


def no_scheduler(ctx: ConductorContext) -> str:
    deadline = ctx.cfg.conductor.scheduler_deadline
    return f"No scheduler answered within {deadline:g} s ({subjects.SCHEDULER_SERVICE})"


async def build(ctx: ConductorContext, task: Task) -> float | None:
    """Schedule and hand a build to its host.

    None: done (the task is acknowledged). A number: no scheduler answered and the
    deadline is not reached, ask again in that many seconds. A scheduler's error (a
    plugin that raised) ends the build in ERROR at once, as does the deadline.
    """
    if task.server_ids:
        return await build_reservation(ctx, task)
    entry = await ctx.st.servers.get(task.server_id)
    if entry is None:  # deleted: a claim made for it may be left (leases.release_for_gone)
        await leases.release_for_gone(ctx.st, task.server_id)
        return None
    srv = entry.value
    if srv.vm_state != states.BUILDING or srv.attempt != task.attempt:
        return None  # done, deleted or superseded by a later attempt
    if srv.task_state == states.SPAWNING and srv.host:
        await send_spawn(ctx, srv)  # resumed after a crash: handing over again is harmless
        return None
    if srv.task_state != states.SCHEDULING:
        return None
    try:
        chosen = await place(ctx, srv)
    except errors.ServiceUnavailable as exc:
        wait = scheduler_wait(ctx, task)
        LOG.warning(
            "conductor.scheduler_unavailable", server=srv.id, error=exc.message, retry_in=wait
        )
        if wait is not None:
            return wait
        await fail_build(ctx, srv.id, task.attempt, no_scheduler(ctx))
        return None
    except errors.HvmeshError as exc:  # the scheduler failed this request: it would again
        LOG.warning("conductor.scheduler_failed", server=srv.id, error=exc.message)
        await fail_build(ctx, srv.id, task.attempt, exc.message)
        return None
    if chosen.host is None:
        await fail_build(ctx, srv.id, task.attempt, f"No valid host was found. {chosen.reason}")
        return None
    await start_spawn(ctx, srv, chosen)
    return None


async def build_reservation(ctx: ConductorContext, task: Task) -> float | None:
    """A multi-create: place every server, or at least min_count of them, or none.

    Claims are taken one server after another (each sees the others' in its group);
    only when enough are held do any of them start spawning. Short of min_count,
    every claim is given back and every server ends in ERROR. A task resumed after a
    crash finds its claims already held: the scheduler answers those idempotently.
    While no scheduler answers it waits as a single build does (the claims taken so far
    are kept); a scheduler's error, or the deadline, gives every claim back and ends
    every server still scheduling in ERROR with that fault.
    """
    pending: list[Server] = []
    spawning: list[Server] = []
    for server_id in task.server_ids:
        entry = await ctx.st.servers.get(server_id)
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
    fault = ""
    try:
        for s in pending:
            chosen = await place(ctx, s)
            if chosen.host is None:
                reason = chosen.reason
                break
            placed.append((s, chosen))
    except errors.ServiceUnavailable as exc:
        wait = scheduler_wait(ctx, task)
        LOG.warning(
            "conductor.scheduler_unavailable",
            server=task.server_id,
            error=exc.message,
            retry_in=wait,
        )
        if wait is not None:
            return wait  # the claims taken so far are found again on the retry
        fault = no_scheduler(ctx)
    except errors.HvmeshError as exc:
        LOG.warning("conductor.scheduler_failed", server=task.server_id, error=exc.message)
        fault = exc.message
    unplaced = pending[len(placed) :]
    if fault or (unplaced and len(spawning) + len(placed) < task.min_count):
        for s, chosen in placed:
            assert chosen.host is not None
            await placement.release(ctx.st, chosen.host, s.id)
            await group_unplace(ctx.st, s)
        message = fault or (
            "No valid host was found. There are not enough hosts available: "
            f"{len(spawning) + len(placed)} of min_count {task.min_count} placed. {reason}"
        )
        for s in pending:
            await fail_build(ctx, s.id, task.attempt, message)
        return None
    for s in unplaced:  # above min_count: the ones that found no room are not created
        await discard(ctx, s)
    for s, chosen in placed:
        await start_spawn(ctx, s, chosen)
    for s in spawning:
        await send_spawn(ctx, s)
    return None


async def place(ctx: ConductorContext, srv: Server) -> Selection:
    """A claimed host for the server: an alternate from its last selection, or a new one.

    On a reschedule the alternates the scheduler offered the first time are tried
    first, as Nova's conductor does: a claim on one that is still up and still has
    room saves asking the scheduler again. Raises ServiceUnavailable when no scheduler
    answers, and the scheduler's error (e.g. PluginFailed) when it failed the request.
    """
    first = 0  # the round of the first claim key asked under
    if srv.attempt > 0:
        chosen = await claim_alternate(ctx, srv)
        if chosen is not None and not chosen.superseded:
            return chosen
        first = 1 if chosen is not None else 0  # that round's claim went back
    spec = RequestSpec(
        server_id=srv.id,
        project=srv.project,
        flavor=srv.flavor,
        image_properties=srv.image_properties,
        availability_zone=srv.availability_zone,
        scheduler_hints=srv.scheduler_hints,
        ignore_hosts=list(srv.retry_hosts),
        num_alternates=max(ctx.cfg.conductor.max_attempts - 1, 0),
    )
    for round_ in range(first, first + GROUP_RETRIES):
        # One key per round, the same on every retry (core/state/leases.py).
        spec.claim_key = leases.build_key(srv.id, srv.attempt, round_)
        selection, violation = await select(ctx, srv, spec)
        if selection.superseded:
            continue  # this round's claim went back before a restart: the next round
        if violation is None:
            return selection
        # Another member's claim landed first: ours went back; choose again.
        assert selection.host is not None
        LOG.info("conductor.group_conflict", server=srv.id, host=selection.host, why=violation)
        spec.ignore_hosts.append(selection.host)
    return Selection(host=None, reason="Server group policy conflicts.")


async def claim_alternate(ctx: ConductorContext, srv: Server) -> Selection | None:
    """Claim the first of the server's alternates that is up and still fits, if any.

    Under the attempt's first claim key, as the scheduler's answer would be: a task
    redelivered after a crash finds the claim it made. A claim given back since, or now
    for a group conflict, answers `superseded`: the scheduler is asked under the next key.
    """
    untried = [h for h in srv.alternates if h not in srv.retry_hosts]
    if not untried:
        return None
    resources = srv.flavor.resources()

    async def pick(tried: list[str]) -> list[str]:
        up = []
        for host in untried:
            if host not in tried and await liveness.is_up(
                ctx.st, host, ctx.cfg.DEFAULT.service_down_time
            ):
                up.append(host)
        return up

    async def claim(host: str) -> placement.ClaimResult:
        return await placement.claim(ctx.st, host, srv.id, resources, build=True)

    key = leases.build_key(srv.id, srv.attempt, 0)
    placed = await leases.place(ctx.st, key, srv.id, pick, claim, num_alternates=len(untried))
    if placed.host is None:
        return Selection(host=None, superseded=True) if placed.superseded else None
    violation = await group_place(ctx.st, srv.id, await group_spec(ctx.st, srv), placed.host)
    if violation is not None:
        await placement.release(ctx.st, placed.host, srv.id)
        LOG.info("conductor.group_conflict", server=srv.id, host=placed.host, why=violation)
        return Selection(host=None, reason=violation, superseded=True)
    LOG.info("conductor.alternate_claimed", server=srv.id, host=placed.host)
    return Selection(host=placed.host, alternates=placed.alternates)


async def start_spawn(ctx: ConductorContext, srv: Server, chosen: Selection) -> None:
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

    written = await ctx.st.servers.mutate(srv.id, to_spawning)
    if written is None or written.value.host != host or written.value.task_state != states.SPAWNING:
        # Deleted or moved on while we scheduled: give the claim back.
        await placement.release(ctx.st, host, srv.id)
        return
    LOG.info("conductor.scheduled", server=srv.id, host=host, attempt=attempt)
    await send_spawn(ctx, written.value)


async def discard(ctx: ConductorContext, srv: Server) -> None:
    """Remove a multi-create's server that found no room (above its min_count)."""
    entry = await ctx.st.servers.get(srv.id)
    if entry is None or entry.value.task_state != states.SCHEDULING:
        return
    try:
        await ctx.st.servers.delete(srv.id, revision=entry.revision)
    except CasConflict:
        return  # changed meanwhile (a delete request): that path finishes it
    await quotas.release(ctx.st, srv.project, [quotas.server_key(srv.id)])
    await group_unplace(ctx.st, srv, leave=True)
    await ports.let_go_all(ctx.st, srv)
    LOG.info("conductor.discarded", server=srv.id, reservation=srv.reservation_id)


async def send_spawn(ctx: ConductorContext, srv: Server) -> None:
    assert srv.host is not None
    image_entry = await ctx.st.images.get(srv.image_id)
    work = Work(
        kind="spawn",
        server_id=srv.id,
        host=srv.host,
        attempt=srv.attempt,
        server=srv,
        image=image_entry.value if image_entry else None,
    )
    await ctx.js.publish(
        await work_subject(ctx.st, srv.host),
        encode(work),
        headers={"Nats-Msg-Id": f"{srv.id}:spawn:{srv.attempt}"},
    )
    timer = Task(
        kind="timer",
        server_id=srv.id,
        attempt=srv.attempt,
        timer="spawn-timeout",
        not_before=now() + ctx.cfg.conductor.action_timeout,
        params={"host": srv.host},
    )
    await ctx.js.publish(
        subjects.timer("spawn-timeout"),
        encode(timer),
        headers={"Nats-Msg-Id": f"{srv.id}:spawn-timeout:{srv.attempt}"},
    )


async def spawn_timed_out(ctx: ConductorContext, task: Task) -> None:
    """A spawn whose host never answered fails like any failed spawn: rescheduled."""
    entry = await ctx.st.servers.get(task.server_id)
    s = entry.value if entry else None
    host = task.params.get("host")
    if s is None or s.task_state != states.SPAWNING or s.attempt != task.attempt:
        return
    if s.host != host or host is None:
        return
    LOG.warning("conductor.spawn_timeout", server=s.id, host=host)
    await on_spawned(
        ctx,
        AgentEvent(
            kind="spawn",
            server_id=s.id,
            host=host,
            ok=False,
            attempt=task.attempt,
            message=f"timed out after {ctx.cfg.conductor.action_timeout:g}s "
            f"waiting for host {host}",
        ),
    )


async def fail_build(ctx: ConductorContext, server_id: str, attempt: int, message: str) -> None:
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

    written = await end_build(ctx, server_id, to_error, message)
    if written is not None:
        await group_unplace(ctx.st, written.value)
    LOG.info("conductor.build_failed", server=server_id, reason=message)


async def end_build(
    ctx: ConductorContext, server_id: str, change: Any, error: str | None = None
) -> Entry[Server] | None:
    """The build's last write (ACTIVE or ERROR); it also closes the "create" action.

    The action is closed first, from the record as read now, so a conductor failing
    before the write (dead, or a NATS node lost) closes it again, a no-op, on the retry;
    closed after, a failure in between would leave it open (the retry is rejected).
    """
    current = await ctx.st.servers.get(server_id)
    held = current.value.request_id if current is not None else None
    ending = change(current.value) if current is not None else None
    if current is not None and held and ending and ending.vm_state != states.BUILDING:
        await _close_create(ctx, current.value, ending, error)
    before: list[Server] = []

    def last(s: Server) -> Server | None:
        before.clear()
        new = change(s)
        if new is None or new.vm_state == states.BUILDING:
            return new  # not the last write: a reschedule
        before.append(s)
        return msgspec.structs.replace(new, request_id=None)

    written = await ctx.st.servers.mutate(server_id, last)
    if written is None or not before:
        return written
    old = before[0]
    if old.request_id and old.request_id != held:  # it moved on since the read: rare
        await _close_create(ctx, old, written.value, error)
    if error is None and written.value.vm_state == states.ERROR and written.value.fault:
        error = written.value.fault.message
    await notify.updated(ctx.nc, old, written.value)
    event = "instance.create.error" if error else "instance.create.end"
    await notify.send(ctx.nc, event, written.value, error=error)
    return written


async def _close_create(
    ctx: ConductorContext, srv: Server, ending: Server, error: str | None
) -> None:
    """Close the create action `srv` holds, as its build ends in `ending`."""
    if error is None and ending.vm_state == states.ERROR and ending.fault:
        error = ending.fault.message
    await action_log.close(
        ctx.st, srv.id, srv.request_id or "", "compute_spawn", host=srv.host, error=error
    )


async def on_spawned(ctx: ConductorContext, ev: AgentEvent) -> None:
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
        await ctx.st.hosts.mutate(ev.host, lambda h: _build_finished(h, ev.server_id))
        entry = await ctx.st.servers.get(ev.server_id)
        if entry is not None and expected(entry.value):  # its ports are up, as Neutron's
            await ports.set_status(ctx.st, entry.value, "ACTIVE")
        await end_build(ctx, ev.server_id, to_active)
        LOG.info("conductor.active", server=ev.server_id, host=ev.host)
        return

    max_attempts = ctx.cfg.conductor.max_attempts

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
    await placement.release(ctx.st, ev.host, ev.server_id, failed_build=True)
    written = await end_build(ctx, ev.server_id, to_retry)
    if written is not None and written.value.host is None:
        await group_unplace(ctx.st, written.value)  # its next host is chosen afresh
    # Re-queue whenever the record shows this failure was taken, also on a redelivered
    # event whose first handling died halfway: the task's message id makes it idempotent.
    if written is None:
        return
    s = written.value
    taken = s.attempt == ev.attempt + 1 and ev.host in s.retry_hosts
    if taken and s.vm_state == states.BUILDING and s.task_state == states.SCHEDULING:
        LOG.info("conductor.rescheduling", server=s.id, failed_host=ev.host, attempt=s.attempt)
        await publish_task(ctx.js, Task(kind="build", server_id=s.id, attempt=s.attempt))


def _build_finished(host: Host, server_id: str) -> Host | None:
    """A spawn worked: the build is no longer in progress, and failures start over."""
    if not host.failed_builds and server_id not in host.in_progress:
        return None
    in_progress = [s for s in host.in_progress if s != server_id]
    return msgspec.structs.replace(host, failed_builds=0, in_progress=in_progress)
