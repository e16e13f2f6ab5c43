"""Reading one KV key by its last message, with the reply decoded here.

nats-py's KeyValue.get makes the same STREAM.MSG.GET request but reads the reply's headers
with Python's e-mail parser, which cost the conductor a tenth of its time in reads alone.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec
from nats.errors import NoRespondersError
from nats.js.errors import APIError
from nats.js.errors import ServiceUnavailableError as JetStreamUnavailable
from nats.js.kv import KeyValue


class _StoredMessage(msgspec.Struct):
    subject: str
    seq: int
    hdrs: str | None = None  # base64 of the NATS header block
    data: str | None = None  # base64


class _MessageGetReply(msgspec.Struct):
    message: _StoredMessage | None = None
    error: dict[str, Any] | None = None


_MESSAGE_GET = msgspec.json.Decoder(_MessageGetReply)
NO_MESSAGE = 10037  # JetStream: no message found
VALID_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what a KV key may hold, as nats-py checks


async def last_value(kv: KeyValue, key: str) -> tuple[bytes, int] | None:
    """The key's value and revision as its stream's leader holds it now; None when the
    key holds nothing, was deleted, or cannot exist."""
    if not VALID_KEY.match(key) or key.startswith(".") or key.endswith("."):
        return None  # no such key can exist (nats-py's InvalidKeyError)
    js: Any = kv._js
    subject = f"{kv._pre}{key}"
    try:
        msg = await js._nc.request(
            f"{js._prefix}.STREAM.MSG.GET.{kv._stream}",
            msgspec.json.encode({"last_by_subj": subject}),
            timeout=js._timeout,
        )
    except NoRespondersError:
        raise JetStreamUnavailable from None
    reply = _MESSAGE_GET.decode(msg.data)
    if reply.error is not None:
        if reply.error.get("err_code") == NO_MESSAGE:
            return None
        APIError.from_error(reply.error)  # raises
    stored = reply.message
    if stored is None or not stored.data or stored.subject != subject:
        return None
    if stored.hdrs and b"KV-Operation:" in base64.b64decode(stored.hdrs):
        return None  # a delete or purge marker
    return base64.b64decode(stored.data), stored.seq
