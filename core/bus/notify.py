"""Versioned notifications on hvmesh.notify.<project>.<event_type>, as Nova's versioned ones.

Outside consumers (billing, monitoring) subscribe to `hvmesh.notify.>` in the HVMESH
account; the HVMESH_NOTIFICATIONS stream keeps a week of them. The project token lets
nats.conf export each tenant account its own project's notifications only, which the
tenant sees as `hvmesh.notify.<event_type>`. Each carries a payload version that changes
only when its fields do: 1.x adds fields, 2.0 would change or remove one.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.protocol import states, subjects
from hvmesh.core.protocol.base import Record, encode, now
from hvmesh.core.protocol.records import Server

LOG = log.get_logger(__name__)

PAYLOAD_VERSION = "1.0"
PUBLISHER = f"hvmesh:{socket.gethostname()}"
_NOT_IN_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


class InstancePayload(Record):
    """The server as a notification shows it (Nova's InstancePayload, trimmed)."""

    id: str
    name: str
    project: str
    user: str
    host: str | None
    vm_state: str
    task_state: str | None
    power_state: int
    status: str
    flavor: str
    image_id: str
    request_id: str | None
    locked: bool


class Notification(Record):
    event_type: str
    publisher_id: str
    timestamp: float
    payload_version: str
    payload: InstancePayload
    # instance.update: the states before the change.
    old_state: dict[str, Any] | None = None
    error: str | None = None


def payload(s: Server) -> InstancePayload:
    return InstancePayload(
        id=s.id,
        name=s.name,
        project=s.project,
        user=s.user,
        host=s.host,
        vm_state=s.vm_state,
        task_state=s.task_state,
        power_state=s.power_state,
        status=states.status(s.vm_state, s.task_state),
        flavor=s.flavor.name,
        image_id=s.image_id,
        request_id=s.request_id,
        locked=s.locked_by is not None,
    )


async def send(nc: Any, event_type: str, server: Server, **extra: Any) -> None:
    """Publish one notification; a failure to is logged, never raised (state is already written)."""
    note = Notification(
        event_type=event_type,
        publisher_id=PUBLISHER,
        timestamp=now(),
        payload_version=PAYLOAD_VERSION,
        payload=payload(server),
        **extra,
    )
    try:
        await nc.publish(subject(server.project, event_type), encode(note))
    except Exception as exc:
        LOG.warning("notify.failed", event_type=event_type, error=str(exc))


def subject(project: str, event_type: str) -> str:
    """The subject of a project's notification; the project is one subject token (a NATS
    account name is one already; anything else has its other characters made `_`)."""
    return subjects.project_notify(_NOT_IN_A_TOKEN.sub("_", project) or "_", event_type)


def state_of(s: Server) -> tuple[str, str | None, int]:
    return (s.vm_state, s.task_state, s.power_state)


async def updated(nc: Any, before: Server, after: Server) -> None:
    """instance.update when vm_state, task_state or power_state changed."""
    if state_of(before) == state_of(after):
        return
    old = {
        "vm_state": before.vm_state,
        "task_state": before.task_state,
        "power_state": before.power_state,
    }
    await send(nc, "instance.update", after, old_state=old)


def decode(data: bytes) -> Notification:
    return msgspec.json.decode(data, type=Notification)
