"""Queueing conductor tasks on HVMESH_TASKS, each publish idempotent per step."""

from __future__ import annotations

import uuid
from typing import Any

from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import encode
from hvmesh.core.protocol.messages import Task


def new_request_id() -> str:
    """The id of one user request (an action), as Nova's req-<uuid>."""
    return f"req-{uuid.uuid4()}"


async def publish_task(js: Any, task: Task) -> None:
    """Queue a task; the message id makes a repeated publish of the same step a no-op.

    A new request (a second delete after a failed one) has a new request id, so it is
    never taken for a repeat.
    """
    await js.publish(
        subjects.task(task.kind),
        encode(task),
        headers={"Nats-Msg-Id": f"{task.server_id}:{task.kind}:{task.attempt}:{task.request_id}"},
    )
