"""Whether an agent's event is trusted: from the host it names, one the server expects, for
the request it answers, and fitting the server's state.

An event that fails any check changes nothing: events.apply logs it as
`conductor.event_rejected` and drops it. The host in the event's subject is the part the
NATS permissions of an agent's credentials enforce; everything else is checked against
the server record as it is now.
"""

from __future__ import annotations

from hvmesh.core.protocol import states
from hvmesh.core.protocol.messages import AgentEvent
from hvmesh.core.protocol.records import Server

# A move's driver steps, by the end of the migration they run on.
SOURCE_STEPS = frozenset(
    {"migrate_disk_and_power_off", "confirm_migration", "finish_revert_migration", "live_migration"}
)
DEST_STEPS = frozenset(
    {
        "finish_migration",
        "prepare_live_migration",
        "post_live_migration_at_destination",
        "rollback_live_migration_at_destination",
    }
)


def subject_host(subject: str) -> str | None:
    """The host named by an event's subject, hvmesh.events.<host>.<server>; None if not one."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["hvmesh", "events"]:
        return None
    return parts[2]


def rejection(ev: AgentEvent, srv: Server | None, subject: str | None = None) -> str | None:
    """Why the event must be dropped, or None when it is to be applied."""
    if subject is not None:
        named = subject_host(subject)
        if named != ev.host:
            return f"sent on {subject}, which is not host {ev.host}'s subject"
        if subject.rsplit(".", 1)[-1] != ev.server_id:
            return f"sent on {subject}, which is not server {ev.server_id}'s subject"
    if srv is None:
        return "no such server"
    if ev.action:
        return _action_rejection(ev, srv)
    if ev.kind == "power":
        if srv.host != ev.host:
            return f"power report from {ev.host}, but the server's host is {srv.host}"
        return None
    if ev.kind == "spawn":
        return _spawn_rejection(ev, srv)
    if ev.kind == "destroy":
        return _destroy_rejection(ev, srv)
    return f"unknown event kind {ev.kind!r}"


def move_hosts(srv: Server) -> list[str]:
    """Both ends of the server's move in progress (none when it is not moving)."""
    m = srv.migration
    return [h for h in (m.source_host, m.dest_host) if h] if m is not None else []


def step_hosts(srv: Server, kind: str) -> list[str]:
    """The hosts a driver step of the server's current action may come from."""
    m = srv.migration
    if kind in SOURCE_STEPS:
        return [m.source_host] if m is not None else []
    if kind in DEST_STEPS:
        return [m.dest_host] if m is not None and m.dest_host else []
    return [h for h in dict.fromkeys([srv.host, *move_hosts(srv)]) if h]


def _action_rejection(ev: AgentEvent, srv: Server) -> str | None:
    if not ev.request_id or srv.request_id != ev.request_id:
        return f"request {ev.request_id or '(none)'} is not the server's current request"
    if ev.host not in step_hosts(srv, ev.kind):
        return f"step {ev.kind} is not expected from host {ev.host}"
    return None


def _spawn_rejection(ev: AgentEvent, srv: Server) -> str | None:
    if srv.vm_state != states.BUILDING:
        return f"the server is {srv.vm_state}, not building"
    if srv.task_state == states.SPAWNING:
        if srv.host != ev.host:
            return f"the server is spawning on {srv.host}, not {ev.host}"
        if srv.attempt != ev.attempt:
            return f"attempt {ev.attempt} is not the server's attempt {srv.attempt}"
        return None
    # A failed spawn already taken (the server rescheduled away from this host): applied
    # again, it only re-queues the build, which a redelivery after a crash needs.
    taken = srv.attempt == ev.attempt + 1 and ev.host in srv.retry_hosts
    if not ev.ok and srv.task_state == states.SCHEDULING and taken:
        return None
    return f"the server is {srv.task_state or 'idle'}, not spawning"


def _destroy_rejection(ev: AgentEvent, srv: Server) -> str | None:
    if srv.task_state != states.DELETING:
        return f"the server is {srv.task_state or srv.vm_state}, not deleting"
    if not ev.request_id or srv.request_id != ev.request_id:
        return f"request {ev.request_id or '(none)'} is not the server's delete request"
    if ev.host not in [h for h in dict.fromkeys([srv.host, *move_hosts(srv)]) if h]:
        return f"the delete sent no destroy to host {ev.host}"
    return None
