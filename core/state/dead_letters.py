"""Dead letters: copies of tasks, events and work given up on, kept for `hvmesh manage tasks`.

Each is the original message's data on hvmesh.dead.<component> (stream HVMESH_DEAD_LETTERS,
made by Store.open: 30 days, 10,000 messages at most), with headers naming where it came
from (subject, stream and sequence), who gave up, after how many deliveries, the last
error and when. Its id is its sequence in the dead-letter stream.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from hvmesh.core import log
from hvmesh.core.protocol import errors, subjects

LOG = log.get_logger(__name__)

COMPONENT = re.compile(r"[A-Za-z0-9_-]+")
ERROR_MAX = 2000  # characters of the last error kept

H_SUBJECT = "Hvmesh-Subject"
H_STREAM = "Hvmesh-Stream"
H_SEQUENCE = "Hvmesh-Sequence"
H_COMPONENT = "Hvmesh-Component"
H_DELIVERIES = "Hvmesh-Deliveries"
H_ERROR = "Hvmesh-Error"
H_AT = "Hvmesh-At"


class DeadLetter(msgspec.Struct, kw_only=True):
    """One message given up on, as `hvmesh manage tasks` shows it."""

    id: int  # its sequence in HVMESH_DEAD_LETTERS
    component: str  # conductor-tasks, conductor-events, conductor-timers, agent-<host>
    subject: str  # where it was published, and where a retry publishes it again
    stream: str
    sequence: int  # in its original stream
    deliveries: int
    error: str
    at: str  # when it was given up on, ISO 8601 UTC
    data: Any = None  # the message: JSON when it is JSON, else its text


def _one_line(text: str) -> str:
    """Header values are one line: newlines become spaces, and the length is bounded."""
    return " ".join(text.split())[:ERROR_MAX]


async def keep(js: Any, component: str, msg: Msg, deliveries: int, error: str) -> None:
    """Store a copy of `msg`, which `component` gave up on after `deliveries` deliveries."""
    try:
        meta = msg.metadata
        stream, sequence = meta.stream, meta.sequence.stream
    except Exception:
        stream, sequence = "", 0
    headers = {
        H_SUBJECT: msg.subject,
        H_STREAM: stream,
        H_SEQUENCE: str(sequence),
        H_COMPONENT: component,
        H_DELIVERIES: str(deliveries),
        H_ERROR: _one_line(error),
        H_AT: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # Two workers giving up on the same message keep one copy.
        "Nats-Msg-Id": f"dead:{stream}:{sequence}:{msg.subject}",
    }
    ack = await js.publish(subjects.dead_letter(component), msg.data, headers=headers)
    LOG.warning(
        "dead_letters.kept",
        id=ack.seq,
        component=component,
        subject=msg.subject,
        deliveries=deliveries,
        error=headers[H_ERROR],
    )


def _view(seq: int, headers: dict[str, str] | None, data: bytes) -> DeadLetter:
    h = headers or {}
    body: Any
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        body = data.decode("utf-8", errors="replace")
    return DeadLetter(
        id=seq,
        component=h.get(H_COMPONENT, ""),
        subject=h.get(H_SUBJECT, ""),
        stream=h.get(H_STREAM, ""),
        sequence=int(h.get(H_SEQUENCE) or 0),
        deliveries=int(h.get(H_DELIVERIES) or 0),
        error=h.get(H_ERROR, ""),
        at=h.get(H_AT, ""),
        data=body,
    )


async def listing(js: Any, component: str | None = None) -> list[DeadLetter]:
    """Every dead letter kept (of one component, if given), oldest first."""
    if component is not None and not COMPONENT.fullmatch(component):
        raise errors.BadRequest(
            f"component {component!r} is not a component name (conductor-tasks, agent-<host>, ...)"
        )
    subject = subjects.dead_letter(component) if component else subjects.DEAD_LETTERS_ALL
    info = await js.stream_info(subjects.DEAD_LETTERS_STREAM)
    if info.state.messages == 0:
        return []
    sub = await js.subscribe(
        subject,
        stream=subjects.DEAD_LETTERS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    found: list[DeadLetter] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except NatsTimeout:
                break  # none of this component's, or emptied since stream_info looked
            found.append(_view(msg.metadata.sequence.stream, msg.headers, msg.data))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


def parse_id(text: str | int) -> int:
    """A dead letter's id from the command line: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise errors.BadRequest(f"dead letter id must be a number, not {text!r}") from None
    if value < 1:
        raise errors.BadRequest(f"dead letter id must be 1 or more, not {value}")
    return value


async def get(js: Any, dead_id: int) -> DeadLetter:
    """The dead letter `dead_id`; NotFound when there is none."""
    try:
        raw = await js.get_msg(subjects.DEAD_LETTERS_STREAM, dead_id)
    except NotFoundError:
        raise errors.NotFound(f"no dead letter {dead_id}") from None
    if not raw.subject or not raw.subject.startswith(subjects.dead_letter("")):
        raise errors.NotFound(f"no dead letter {dead_id}")
    return _view(dead_id, raw.headers, raw.data or b"")


async def drop(js: Any, dead_id: int) -> DeadLetter:
    """Remove the dead letter `dead_id`; returns what it held."""
    letter = await get(js, dead_id)
    try:
        await js.delete_msg(subjects.DEAD_LETTERS_STREAM, dead_id)
    except NotFoundError:
        raise errors.NotFound(f"no dead letter {dead_id}") from None
    LOG.info("dead_letters.dropped", id=dead_id, subject=letter.subject)
    return letter


async def retry(js: Any, dead_id: int) -> DeadLetter:
    """Publish the dead letter's message again on its subject, then remove the dead letter."""
    try:
        raw = await js.get_msg(subjects.DEAD_LETTERS_STREAM, dead_id)
    except NotFoundError:
        raise errors.NotFound(f"no dead letter {dead_id}") from None
    letter = _view(dead_id, raw.headers, raw.data or b"")
    if not letter.subject:
        raise errors.BadRequest(f"dead letter {dead_id} does not name its original subject")
    await js.publish(
        letter.subject, raw.data or b"", headers={"Nats-Msg-Id": f"retry:{uuid.uuid4().hex}"}
    )
    await drop(js, dead_id)
    LOG.info("dead_letters.retried", id=dead_id, subject=letter.subject)
    return letter
