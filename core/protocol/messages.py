"""What services send each other: the scheduler's request and answer, tasks, work and agents' events."""

from __future__ import annotations

from typing import Literal

from msgspec import field

from hvmesh.core.protocol.action_requests import ServerAction
from hvmesh.core.protocol.base import Record, now
from hvmesh.core.protocol.records import Flavor, GroupSpec, Image, SchedulerHints, Server, Vif


class RequestSpec(Record):
    """What the conductor asks the scheduler to place (Nova's RequestSpec, trimmed)."""

    server_id: str
    project: str
    flavor: Flavor
    image_properties: dict[str, str] = field(default_factory=dict)
    availability_zone: str | None = None
    scheduler_hints: SchedulerHints = field(default_factory=SchedulerHints)
    group: GroupSpec | None = None
    ignore_hosts: list[str] = field(default_factory=list)
    num_alternates: int = 2
    # A move's admin-chosen target: only this host is considered (it must still pass
    # every filter), as Nova's requested_destination.
    requested_host: str | None = None
    # Names this request across its retries ("<server>.b<attempt>.<round>" for a build,
    # "<server>.<migration>.<round>" for a move): whoever answers it, and however often,
    # its claim lands on one host only (core/state/leases.py). "" for no lease.
    claim_key: str = ""
    # Epoch seconds after which the caller has given up on this request: no claim is
    # made for it then (0: no limit).
    expires_at: float = 0.0


class Selection(Record):
    """The scheduler's answer: the claimed host (None: no valid host) and alternates."""

    host: str | None
    alternates: list[str] = field(default_factory=list)
    reason: str = ""
    # No host because this request's claim was made once and given back since: the
    # caller asks again under its next claim_key.
    superseded: bool = False


TaskKind = Literal["build", "delete", "action", "timer"]


class Task(Record):
    kind: TaskKind
    server_id: str
    attempt: int = 0
    # A multi-create's build: every server of the reservation, placed all or none (at
    # least min_count of them). Empty for a single server.
    server_ids: list[str] = field(default_factory=list)
    min_count: int = 1
    # kind "action": the request as the API accepted it (references already resolved).
    action: ServerAction | None = None
    # kind "timer": what to do at `not_before` (e.g. "timeout", "confirm-resize"), and
    # for a timeout, the action and the step it waits for.
    timer: str = ""
    not_before: float = 0.0
    params: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    created_at: float = field(default_factory=now)


WorkKind = str  # "spawn", "destroy", or an action's driver step ("reboot", "power_off", ...)


class Work(Record):
    """A unit of work for one agent, on hvmesh.work.<host>."""

    kind: WorkKind
    server_id: str
    host: str
    attempt: int = 0
    server: Server | None = None
    image: Image | None = None
    vif: Vif | None = None  # attach_interface / detach_interface: the interface
    request_id: str = ""
    # The server action this step belongs to ("" for builds and deletes).
    action: str = ""
    # Step arguments: reboot type, the other host of a move, ...
    params: dict[str, str] = field(default_factory=dict)


class AgentEvent(Record):
    """What an agent reports back on hvmesh.events.<host>.<server>."""

    kind: str  # "spawn", "destroy", "power"
    server_id: str
    host: str
    ok: bool = True
    attempt: int = 0
    power_state: int | None = None
    message: str = ""
    request_id: str = ""
    action: str = ""
    # What a step made, for the conductor: a snapshot's disk_format, size and sha256.
    result: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=now)
    at: float = field(default_factory=now)
