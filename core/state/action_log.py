"""The instance action log: what was done to each server, by whom, and each step's result.

One record per action in the `server_actions` bucket, keyed "<server id>.<request id>"
(`nats kv get server_actions <server>.<request>` reads it). The API writes the action
when it accepts it; the conductor appends the steps (its own and, from their events,
the agents') and finishes it. Every write is a compare-and-set, so a step recorded twice
(a redelivered event) is kept once. Records outlive their server, as Nova's do.
"""

from __future__ import annotations

import contextlib

import msgspec

from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import ActionEvent, InstanceAction
from hvmesh.core.state.store import CasConflict, Store


def key(server_id: str, request_id: str) -> str:
    return f"{server_id}.{request_id}"


async def start(
    store: Store, server_id: str, request_id: str, action: str, project: str, user: str
) -> InstanceAction:
    record = InstanceAction(
        server_id=server_id, request_id=request_id, action=action, project=project, user=user
    )
    with contextlib.suppress(CasConflict):  # recorded by an earlier try of the same request
        await store.server_actions.create(key(server_id, request_id), record)
    return record


async def step(
    store: Store,
    server_id: str,
    request_id: str,
    event: str,
    *,
    host: str | None = None,
    start_time: float | None = None,
    error: str | None = None,
    done: bool = True,
) -> None:
    """Record one step: started (`done=False`) or finished, with its result.

    A finished step replaces its own unfinished entry. A step already recorded with the
    same start time (a redelivered agent event) is not recorded again.
    """
    entry = ActionEvent(
        event=event,
        host=host,
        start_time=start_time if start_time is not None else now(),
        finish_time=now() if done else None,
        result=None if not done else ("Error" if error else "Success"),
        details=error or "",
    )

    def add(a: InstanceAction) -> InstanceAction | None:
        return _with_step(a, entry, done)

    await store.server_actions.mutate(key(server_id, request_id), add)


def _with_step(a: InstanceAction, entry: ActionEvent, done: bool) -> InstanceAction | None:
    """`a` with step `entry` recorded (finishing its open entry, if any); None if it is
    recorded already."""
    event = entry.event
    if any(
        e.event == event and e.start_time == entry.start_time and e.finish_time is not None
        for e in a.events
    ):
        return None
    open_ = [i for i, e in enumerate(a.events) if e.event == event and e.finish_time is None]
    if not open_:
        return msgspec.structs.replace(a, events=[*a.events, entry])
    if not done:
        return None
    i = open_[-1]
    closed = msgspec.structs.replace(entry, start_time=a.events[i].start_time)
    return msgspec.structs.replace(a, events=[*a.events[:i], closed, *a.events[i + 1 :]])


async def close(
    store: Store,
    server_id: str,
    request_id: str,
    event: str,
    *,
    host: str | None = None,
    error: str | None = None,
) -> None:
    """Record the last step `event` and end the action, in one write; nothing once it
    ended (so a retry of the step that ends it changes nothing)."""
    t = now()
    entry = ActionEvent(
        event=event,
        host=host,
        start_time=t,
        finish_time=t,
        result="Error" if error else "Success",
        details=error or "",
    )

    def last(a: InstanceAction) -> InstanceAction | None:
        if a.finish_time is not None:
            return None
        a = _with_step(a, entry, done=True) or a
        return msgspec.structs.replace(a, finish_time=t, message="Error" if error else None)

    await store.server_actions.mutate(key(server_id, request_id), last)


async def finish(store: Store, server_id: str, request_id: str, error: str | None = None) -> None:
    """The action is over; with `error` it failed (message "Error", as Nova's)."""

    def close(a: InstanceAction) -> InstanceAction | None:
        if a.finish_time is not None:
            return None
        return msgspec.structs.replace(a, finish_time=now(), message="Error" if error else None)

    await store.server_actions.mutate(key(server_id, request_id), close)


async def for_server(store: Store, server_id: str) -> list[InstanceAction]:
    """Every action recorded for a server, newest first (as Nova lists them)."""
    actions = await store.server_actions.values(prefix=server_id)
    return sorted(actions, key=lambda a: a.start_time, reverse=True)
