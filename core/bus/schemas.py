"""The JSON Schema of an endpoint's request and reply, as its $SRV.INFO metadata carries it.

Each schema is generated from the msgspec type the endpoint decodes (or answers with) and
kept as compact JSON text under the metadata keys `request_schema` and `reply_schema`,
so `nats micro info` and `hvmesh api schema` show what an endpoint takes and gives.
An endpoint whose reply has no type of its own answers a JSON object (GENERIC_REPLY); one
taking raw bytes says so (RAW_REQUEST). Errors are the same for every endpoint (ERROR).
"""

from __future__ import annotations

import types
from typing import Any

import msgspec

REQUEST_KEY = "request_schema"
REPLY_KEY = "reply_schema"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

GENERIC_REPLY: dict[str, Any] = {
    "description": (
        "A JSON object wrapping the resource as Nova does: a single resource under its "
        'singular name ({"server": {...}}), a list under its plural ({"servers": [...]}). '
        "A failed request is answered with ERROR instead."
    ),
    "type": "object",
}

RAW_REQUEST: dict[str, Any] = {
    "description": "Raw bytes, not JSON (headers carry the parameters).",
    "type": "string",
    "contentEncoding": "binary",
}

ERROR: dict[str, Any] = {
    "description": (
        "Every endpoint's error reply, with the headers Nats-Service-Error (the message) "
        "and Nats-Service-Error-Code (the code)."
    ),
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}


def schema_of(type_: type | types.UnionType) -> dict[str, Any]:
    """The JSON Schema msgspec generates for `type_`."""
    return msgspec.json.schema(type_)


def compact(schema: dict[str, Any]) -> str:
    return msgspec.json.encode(schema).decode()


def endpoint_metadata(
    request: type | types.UnionType | None, reply: type | types.UnionType | None
) -> dict[str, str]:
    """The metadata entries of one endpoint: its request and reply schemas, as JSON text.

    `request` None: the endpoint takes raw bytes; `reply` None: the generic reply.
    """
    request_schema = RAW_REQUEST if request is None else schema_of(request)
    reply_schema = GENERIC_REPLY if reply is None else schema_of(reply)
    return {
        REQUEST_KEY: compact({"$schema": SCHEMA_DIALECT, **request_schema}),
        REPLY_KEY: compact({"$schema": SCHEMA_DIALECT, **reply_schema}),
    }
