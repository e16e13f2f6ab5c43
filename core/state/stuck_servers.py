"""Servers whose task stopped moving: how long a task_state may stay unchanged, and how one is ended.

A build still scheduling may take [conductor] scheduler_deadline + action_timeout, any
other task_state twice action_timeout: longer than any step of it can take. Past that
the task is ended as an operator's reset-state would: a build goes to ERROR, any other
task is dropped with the vm_state kept; either way with a fault saying since when it
was stuck, its running action closed with that error, by compare-and-set on a record
that has not changed since it was seen. The conductor does this on its own
(core/conductor/stuck_watch.py); `hvmesh manage audit --heal` does it on demand.
"""

from __future__ import annotations

import datetime

import msgspec

from hvmesh.core.config import Config
from hvmesh.core.protocol import states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Fault, Server
from hvmesh.core.state import action_log, migration_log, placement, quotas
from hvmesh.core.state.store import Store


def limit(server: Server, cfg: Config) -> float:
    """Seconds the server's task_state may stay unchanged."""
    c = cfg.conductor
    if server.task_state == states.SCHEDULING:
        return c.scheduler_deadline + c.action_timeout
    return 2 * c.action_timeout


def is_stuck(server: Server, cfg: Config, at: float) -> bool:
    """Whether the server's task has stayed unchanged past its limit at time `at`."""
    return server.task_state is not None and at - server.updated_at > limit(server, cfg)


def since(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")


def _end(s: Server, seen: Server, by: str) -> Server | None:
    """`s` ended as reset-state would, if it is still as `seen`."""
    if s.task_state != seen.task_state or s.updated_at != seen.updated_at:
        return None
    fault = Fault(
        code=500,
        message=f"stuck in {s.task_state} since {since(s.updated_at)}, ended by {by}",
    )
    vm_state = states.ERROR if s.vm_state == states.BUILDING else s.vm_state
    # A move accepted but never begun (its task lost on the way) is no move: the server
    # stays where and as it was. One under way keeps its migration for the operator.
    migration = None if unbegun(s) else s.migration
    return msgspec.structs.replace(
        s,
        vm_state=vm_state,
        task_state=None,
        request_id=None,
        fault=fault,
        migration=migration,
        updated_at=now(),
    )


def unbegun(s: Server) -> bool:
    """Whether the server holds a move that has not left its source yet."""
    m = s.migration
    return m is not None and m.status == "pre-migrating" and m.dest_host is None


async def end_stuck(store: Store, seen: Server, by: str) -> bool:
    """End `seen`'s task if the record is still as seen; whether it was ended here."""
    ended: list[Server] = []

    def change(s: Server) -> Server | None:
        new = _end(s, seen, by)
        ended[:] = [new] if new is not None else []
        return new

    await store.servers.mutate(seen.id, change)
    if not ended:
        return False
    if seen.host and seen.vm_state == states.BUILDING:  # no build goes on there now
        await placement.not_in_progress(store, seen.host, seen.id)
    if seen.request_id and ended[0].fault is not None:
        await action_log.finish(store, seen.id, seen.request_id, error=ended[0].fault.message)
    m = seen.migration
    if m is not None and ended[0].migration is None:
        # The source's allocation back to the server (if the conductor had handed it to
        # the move), the move's record ended, and what a resize reserved counted again.
        await placement.move(store, m.source_host, m.id, seen.id)
        await migration_log.follow(store, seen, ended[0])
        await quotas.settle(store, ended[0])
    return True
