"""The conductor's side of server actions: the steps every action shares.

An action module (power_actions, moves, shelving) registers what it does with
`Lifecycle.register`: a handler for the action's task, one per agent step it waits for,
and optionally one for its timeout. The shared steps are here:

- `send`: hand a driver step to a host's agent, and start the step's timeout;
- `transition`: a compare-and-set of the server, only while it still shows the action's
  request id, with an instance.update notification when a state changed;
- `finish`: end the action (task_state back to None), its log entry and notifications.

Timers are tasks on HVMESH_TIMERS that wait, by a delayed redelivery, until they are
due; a timer whose action is over (the request id moved on) does nothing. A timer
registered with `register_timer` is the exception: it outlives the action that set it
(a resize's auto-confirm), and its handler gets the server as it is then, to check for
itself whether it still applies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.bus import notify
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.conductor.work_route import work_subject
from hvmesh.core.protocol import states, subjects
from hvmesh.core.protocol.action_requests import action_name
from hvmesh.core.protocol.base import encode, now
from hvmesh.core.protocol.messages import AgentEvent, Task, Work
from hvmesh.core.protocol.records import Fault, Image, Server, Vif
from hvmesh.core.state import action_log, migration_log, quotas
from hvmesh.core.state.store import Entry, Store

LOG = log.get_logger(__name__)

ActionHandler = Callable[[Task, Server], Awaitable[None]]
StepHandler = Callable[[AgentEvent, Server], Awaitable[None]]
TimerHandler = Callable[[Task, Server], Awaitable[None]]
GoneHandler = Callable[[Task], Awaitable[None]]


class NotYet(Exception):
    """A timer's handler found its moment not come yet: it is delivered again in `delay` s."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"not yet: again in {delay:g}s")
        self.delay = delay


@dataclass
class Handlers:
    """What one action does: on its task, on each agent step, on a timeout or timer."""

    run: ActionHandler
    steps: dict[str, StepHandler] = field(default_factory=dict)
    timeout: TimerHandler | None = None
    timers: dict[str, TimerHandler] = field(default_factory=dict)


class Lifecycle:
    def __init__(self, conductor: ConductorContext) -> None:
        self.conductor = conductor
        self.actions: dict[str, Handlers] = {}
        self.free_timers: dict[str, TimerHandler] = {}
        self.gone_timers: dict[str, GoneHandler] = {}

    @property
    def st(self) -> Store:
        return self.conductor.st

    @property
    def cfg(self) -> Any:
        return self.conductor.cfg

    def register(self, action: str, handlers: Handlers) -> None:
        self.actions[action] = handlers

    def register_timer(
        self, name: str, handler: TimerHandler, gone: GoneHandler | None = None
    ) -> None:
        """A timer that is not tied to a running action: it runs whatever the request id;
        `gone`, when given, runs instead once the server's record is deleted."""
        self.free_timers[name] = handler
        if gone is not None:
            self.gone_timers[name] = gone

    # --- dispatch (called by the conductor) -------------------------------------------------

    async def on_task(self, task: Task) -> None:
        """Run an accepted action, unless the server moved on since (a delete, a reset)."""
        assert task.action is not None
        srv = await self.current(task.server_id, task.request_id)
        if srv is None:
            return
        name = _action_name(task)
        handlers = self.actions.get(name)
        if handlers is None:
            await self.fail(srv, name, f"action {name} is not supported")
            return
        await handlers.run(task, srv)

    async def on_event(self, ev: AgentEvent) -> None:
        srv = await self.current(ev.server_id, ev.request_id)
        if srv is None:
            return  # the action is over (timed out, superseded): a late report changes nothing
        handlers = self.actions.get(ev.action)
        step = handlers.steps.get(ev.kind) if handlers else None
        if step is None:
            LOG.error("lifecycle.unexpected_step", action=ev.action, kind=ev.kind)
            return
        await action_log.step(
            self.st,
            srv.id,
            ev.request_id,
            f"compute_{ev.kind}",
            host=ev.host,
            start_time=ev.started_at,
            error=None if ev.ok else ev.message,
        )
        await step(ev, srv)

    async def on_timer(self, task: Task) -> None:
        free = self.free_timers.get(task.timer)
        if free is not None:
            entry = await self.st.servers.get(task.server_id)
            if entry is not None:
                await free(task, entry.value)
            elif task.timer in self.gone_timers:
                await self.gone_timers[task.timer](task)
            return
        srv = await self.current(task.server_id, task.request_id)
        if srv is None:
            return
        action = task.params.get("action", "")
        handlers = self.actions.get(action)
        if task.timer == "timeout":
            if task.params.get("step_of") != _step_token(srv):
                return  # that step is done; the action has moved on to another
            message = self.timeout_reason(task)
            LOG.warning("lifecycle.timeout", server=srv.id, action=action, why=message)
            await action_log.step(
                self.st, srv.id, srv.request_id or "", f"compute_{task.params.get('step')}",
                host=task.params.get("host"), error=message,
            )  # fmt: skip
            if handlers is not None and handlers.timeout is not None:
                await handlers.timeout(task, srv)
            else:
                await self.fail(srv, action, message)
            return
        handler = handlers.timers.get(task.timer) if handlers else None
        if handler is not None:
            await handler(task, srv)

    def timeout_reason(self, task: Task) -> str:
        """Why a step's timeout fired; one run early (its host stopped heartbeating) says so."""
        return task.params.get("why") or (
            f"timed out after {self.cfg.conductor.action_timeout:g}s waiting for "
            f"{task.params.get('step')} on host {task.params.get('host')}"
        )

    async def current(self, server_id: str, request_id: str) -> Server | None:
        """The server, if it is still in the action `request_id` (else None)."""
        entry = await self.st.servers.get(server_id)
        if entry is None or not request_id or entry.value.request_id != request_id:
            return None
        return entry.value

    # --- shared steps --------------------------------------------------------------------------

    async def send(
        self,
        srv: Server,
        action: str,
        kind: str,
        host: str,
        params: dict[str, str] | None = None,
        image: Image | None = None,
        server: Server | None = None,
        vif: Vif | None = None,
    ) -> None:
        """Hand one driver step to `host`'s agent and start its timeout."""
        assert srv.request_id is not None
        work = Work(
            kind=kind,
            server_id=srv.id,
            host=host,
            server=server or srv,
            image=image,
            vif=vif,
            request_id=srv.request_id,
            action=action,
            params=params or {},
        )
        await self.conductor.js.publish(
            await work_subject(self.st, host),
            encode(work),
            headers={"Nats-Msg-Id": f"{srv.id}:{kind}:{srv.request_id}:{host}"},
        )
        await self.timer(
            srv,
            "timeout",
            self.cfg.conductor.action_timeout,
            action=action,
            step=kind,
            host=host,
            step_of=_step_token(srv),
        )

    async def timer(self, srv: Server, name: str, delay: float, **params: str) -> None:
        """A durable timer: the action's `name` handler runs after `delay` seconds."""
        assert srv.request_id is not None
        task = Task(
            kind="timer",
            server_id=srv.id,
            request_id=srv.request_id,
            timer=name,
            not_before=now() + delay,
            params=params,
        )
        token = params.get("step_of", "")
        await self.conductor.js.publish(
            subjects.timer(name),
            encode(task),
            headers={"Nats-Msg-Id": f"{srv.id}:{name}:{srv.request_id}:{token}"},
        )

    async def transition(
        self, srv: Server, change: Callable[[Server], Server | None]
    ) -> Entry[Server] | None:
        """Change the server while it is still in this action; None when it no longer is."""
        request_id = srv.request_id
        before: list[Server] = []  # the record the last try read, while still in the action

        def guarded(s: Server) -> Server | None:
            before.clear()
            if s.request_id != request_id:
                return None
            before.append(s)
            new = change(s)
            return None if new is None else msgspec.structs.replace(new, updated_at=now())

        written = await self.st.servers.mutate(srv.id, guarded)
        if written is None or not before:
            return None
        await migration_log.follow(self.st, before[0], written.value)
        await notify.updated(self.conductor.nc, before[0], written.value)
        return written

    async def finish(
        self,
        srv: Server,
        action: str,
        change: Callable[[Server], Server] | None = None,
        error: str | None = None,
        fault: bool = False,
    ) -> Server | None:
        """End the action: task_state None, the log closed, instance.<action>.end or .error.

        With `fault`, the error is also kept as the server's fault (shown by servers.get).
        """
        request_id = srv.request_id or ""

        def done(s: Server) -> Server:
            s = change(s) if change is not None else s
            return msgspec.structs.replace(
                s,
                task_state=None,
                request_id=None,
                fault=Fault(code=500, message=error) if error and fault else s.fault,
            )

        # The log is closed first: whoever sees the server at rest finds its action ended,
        # and a conductor that dies before the record is written closes it again (a no-op)
        # when the event or task comes back.
        await action_log.finish(self.st, srv.id, request_id, error)
        written = await self.transition(srv, done)
        if written is None:
            return None
        await quotas.settle(self.st, written.value)  # a resize confirmed, reverted; an offload
        event = f"instance.{_event_name(action)}.{'error' if error else 'end'}"
        await notify.send(self.conductor.nc, event, written.value, error=error)
        LOG.info("lifecycle.finished", server=srv.id, action=action, error=error)
        return written.value

    async def fail(self, srv: Server, action: str, error: str) -> Server | None:
        """The action failed and changed nothing: back to the state it started from."""
        return await self.finish(srv, action, error=error)

    async def give_up(self, srv: Server, action: str, error: str) -> Server | None:
        """The conductor could not carry the action on: it ends with `error` as the fault.

        Without a move under way it changed nothing that stays, so the server is back in
        the state it started from; with one (a migration record) where the guest is is
        not known, so ERROR, as Nova leaves a failed move.
        """

        def to_error(s: Server) -> Server:
            return msgspec.structs.replace(s, vm_state=states.ERROR)

        change = to_error if srv.migration is not None else None
        return await self.finish(srv, action, change, error=error, fault=True)

    async def started(self, srv: Server, action: str) -> None:
        """The conductor took the action up: its log step and instance.<action>.start."""
        await action_log.step(self.st, srv.id, srv.request_id or "", f"conductor_{action}")
        await notify.send(self.conductor.nc, f"instance.{_event_name(action)}.start", srv)


def _action_name(task: Task) -> str:
    assert task.action is not None
    return action_name(task.action)


def _event_name(action: str) -> str:
    """instance.<name>.start|end|error, with Nova's underscores (live_migrate, ...)."""
    return action.replace("-", "_")


def _step_token(srv: Server) -> str:
    """Identifies the step a timeout waits for: the server's task_state and host now.

    During a move, also its migration's status: a live migration's steps share one
    task_state and host, and tell themselves apart by it.
    """
    token = f"{srv.task_state}@{srv.host}"
    return f"{token}/{srv.migration.status}" if srv.migration is not None else token
