"""The bounds on what one API request may carry: its size, and the lengths and counts of its fields.

Every bound is a constant here, named in the error that refuses a request over it, and
the field types below carry them into the request Structs (a field over its bound is a
400 naming the field and the bound, as msgspec words it: ``Expected `object` of length
<= 128 - at `$.metadata` ``). The table in docs/api.md lists them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

# The largest request body the API takes, in bytes (an images.upload chunk included),
# well below NATS's max_payload (8 MB in the shipped nats.conf): a bigger body is a 413.
MAX_REQUEST_BYTES = 1024 * 1024

# Names, ids and references (as Nova's 255-character names).
MAX_NAME_LENGTH = 255

# Key-value maps a tenant sets (server metadata, image properties, flavor extra specs,
# aggregate metadata): at most this many items, keys and values at most 255 characters
# (Nova's metadata_items default and its key and value lengths). The metadata_items
# quota may lower the item count for a project, never raise it past this.
MAX_METADATA_ITEMS = 128
MAX_METADATA_KEY_LENGTH = 255
MAX_METADATA_VALUE_LENGTH = 255

# user_data: at most 65535 bytes once decoded (Nova's; the API decodes it to check, and
# names the decoded size). Its base64 text is bounded loosely before that.
MAX_USER_DATA_BYTES = 65535
MAX_USER_DATA_TEXT = 200_000

# Servers one servers.create asks for (the project's instances quota bounds it further).
MAX_COUNT = 1000

# Interfaces one servers.create asks for (networks and ports together).
MAX_NICS = 32

# Server ids in each of scheduler_hints' same_host and different_host.
MAX_HINT_SERVERS = 64

# DNS servers of one network.
MAX_DNS_NAMESERVERS = 16

NameText = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
MetaKey = Annotated[str, Meta(min_length=1, max_length=MAX_METADATA_KEY_LENGTH)]
MetaValue = Annotated[str, Meta(max_length=MAX_METADATA_VALUE_LENGTH)]
Metadata = Annotated[dict[MetaKey, MetaValue], Meta(max_length=MAX_METADATA_ITEMS)]
MetadataUpdate = Annotated[dict[MetaKey, MetaValue | None], Meta(max_length=MAX_METADATA_ITEMS)]
HintServers = Annotated[list[NameText], Meta(max_length=MAX_HINT_SERVERS)]
Nics = Annotated[list[NameText], Meta(max_length=MAX_NICS)]
UserDataText = Annotated[str, Meta(max_length=MAX_USER_DATA_TEXT)]


def request_too_large(size: int, most: int = MAX_REQUEST_BYTES) -> str:
    """The message refusing a body of `size` bytes."""
    return f"request body is {size} bytes; the limit (max_request_bytes) is {most}"


_BOUND = re.compile(r"^Expected `(\w+)`.*?[<>]=? ?-?\d+ - at (`key` in )?`\$(.*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def with_value(message: str, data: bytes) -> str:
    """A msgspec bound error (``Expected `str` of length <= 255 - at `$.name` ``) with the
    value that broke it added: ``(got 300)``; the message as it was when it names no bound."""
    match = _BOUND.match(message)
    if match is None:
        return message
    kind, of_key, path = match.groups()
    try:
        value = msgspec.json.decode(data)
        for attr, index in _STEP.findall(path):
            if attr:
                value = value[attr]
            elif index == "...":  # one of a map's values: the longest
                value = max(value.values(), key=_size)
            else:
                value = value[int(index)]
        if of_key:
            value = max(value, key=_size)
    except (msgspec.DecodeError, LookupError, TypeError, ValueError, RecursionError):
        return message
    got = value if kind in ("int", "float") or "length" not in message else _size(value)
    return f"{message} (got {got})"


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else 0
