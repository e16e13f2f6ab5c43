"""The ground every message and record stands on: shared field types, ids, time, JSON encoding."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

Name = Annotated[str, Meta(min_length=1, max_length=255)]


NonNegInt = Annotated[int, Meta(ge=0)]


PosInt = Annotated[int, Meta(ge=1)]


def new_id() -> str:
    """A new record id (UUID4 string, as Nova uses)."""
    return str(uuid.uuid4())


def now() -> float:
    """Seconds since the epoch; every timestamp in a record uses this."""
    return time.time()


class Request(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for API request bodies: unknown fields are an error, never silently ignored."""


class Record(Struct, kw_only=True):
    """Base for stored records: tolerant of fields added by newer versions."""


DiskFormat = Literal["qcow2", "raw", "vmdk", "vhd", "vhdx", "iso", "ami", "ari", "aki"]


GroupPolicy = Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    """JSON-encode a Struct (or plain data) for the wire or a KV value."""
    return _encoder.encode(obj)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
