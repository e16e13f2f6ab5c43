"""Compute os-aggregates: list, show, create, update, delete, actions, image caching (501)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from hvmesh.core.rest.calls import PREFIX, Compute, json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import iso
from hvmesh.core.rest.legacy_ids import every, is_uuid, number, resolve, uuid_of


class AggregateBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /os-aggregates' and PUT /os-aggregates/{id}'s `aggregate` object."""

    name: str | None = None
    availability_zone: str | None = None


class HostBody(msgspec.Struct, forbid_unknown_fields=True):
    host: str


class MetadataBody(msgspec.Struct, forbid_unknown_fields=True):
    metadata: dict[str, str | None]


class CachedImage(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class CacheBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /os-aggregates/{id}/images' body (2.81)."""

    cache: list[CachedImage]


def view(c: Compute, a: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(a.get("metadata") or {})
    out: dict[str, Any] = {"id": number("aggregate", a["id"])}
    if c.at_least(2, 41):
        # hvmesh's aggregate ids are UUIDs: Nova's `uuid` is that id
        out["uuid"] = a["id"] if is_uuid(a["id"]) else uuid_of("aggregate", a["id"])
    return out | {
        "name": a["name"],
        "availability_zone": metadata.get("availability_zone"),
        "hosts": list(a.get("hosts") or []),
        "metadata": metadata,
        "created_at": iso(a["created_at"]),
        "updated_at": None,
        "deleted": False,
        "deleted_at": None,
    }


def parse(raw: Any, into: type[Any], what: str) -> Any:
    """A request object as `into`, or a 400 naming what is wrong with it."""
    try:
        return msgspec.convert(raw, into)
    except msgspec.ValidationError as exc:
        raise RestError(400, f"{what}: {exc}") from None


def checked_name(value: str | None, field: str) -> str | None:
    if value is not None and not 1 <= len(value.strip()) <= 255:
        raise RestError(400, f"aggregate.{field}: 1 to 255 characters, not {value!r}")
    return value


async def ref(c: Compute) -> str:
    """The aggregate a path names: its integer id, or hvmesh's id or name."""
    return await resolve(
        c, c.request.match_info["id"], "aggregate", "aggregates", lambda a: a["id"]
    )


async def index(request: web.Request) -> web.Response:
    c = Compute(request)
    return c.reply({"aggregates": [view(c, a) for a in await every(c, "aggregates")]})


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    reply = await c.call("aggregates", "get", {"id": await ref(c)})
    return c.reply({"aggregate": view(c, reply["aggregate"])})


async def create(request: web.Request) -> web.Response:
    c = Compute(request)
    body = parse(await json_body(request, "aggregate"), AggregateBody, "aggregate")
    if body.name is None:
        raise RestError(400, "aggregate.name: required")
    req: dict[str, Any] = {"name": checked_name(body.name, "name")}
    if checked_name(body.availability_zone, "availability_zone") is not None:
        req["availability_zone"] = body.availability_zone
    reply = await c.call("aggregates", "create", req)
    return c.reply({"aggregate": view(c, reply["aggregate"])})


async def update(request: web.Request) -> web.Response:
    """PUT /os-aggregates/{id}: a new availability zone; hvmesh cannot rename one."""
    c = Compute(request)
    body = parse(await json_body(request, "aggregate"), AggregateBody, "aggregate")
    if body.name is None and body.availability_zone is None:
        raise RestError(400, "aggregate: give name or availability_zone")
    checked_name(body.availability_zone, "availability_zone")
    ident = await ref(c)
    current = (await c.call("aggregates", "get", {"id": ident}))["aggregate"]
    if body.name not in (None, current["name"]):
        raise RestError(501, "aggregate.name: hvmesh's API cannot rename an aggregate")
    if body.availability_zone is not None:
        metadata = {"availability_zone": body.availability_zone}
        current = (
            await c.call("aggregates", "set_metadata", {"id": current["id"], "metadata": metadata})
        )["aggregate"]
    return c.reply({"aggregate": view(c, current)})


async def delete(request: web.Request) -> web.Response:
    c = Compute(request)
    await c.call("aggregates", "delete", {"id": await ref(c)})
    return c.reply(None)


ACTIONS = ("add_host", "remove_host", "set_metadata")


async def action(request: web.Request) -> web.Response:
    """POST /os-aggregates/{id}/action: add_host, remove_host or set_metadata."""
    c = Compute(request)
    try:
        body = await request.json()
    except ValueError:
        raise RestError(400, "malformed JSON in the request body") from None
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in ACTIONS:
        raise RestError(400, f"the request body needs exactly one of {', '.join(ACTIONS)}")
    ((name, inner),) = body.items()
    req: dict[str, Any] = {"id": await ref(c)}
    if name == "set_metadata":
        req["metadata"] = parse(inner, MetadataBody, name).metadata
    else:
        req["host"] = parse(inner, HostBody, name).host
    reply = await c.call("aggregates", name, req)
    return c.reply({"aggregate": view(c, reply["aggregate"])})


async def images(request: web.Request) -> web.Response:
    """POST /os-aggregates/{id}/images (2.81): checked as Nova checks it, then 501."""
    c = Compute(request)
    if not c.at_least(2, 81):
        raise RestError(404, "POST /os-aggregates/{id}/images: a microversion 2.81 API")
    try:
        raw = await request.json()
    except ValueError:
        raise RestError(400, "malformed JSON in the request body") from None
    body = parse(raw, CacheBody, "request body")
    ids = [i.id for i in body.cache]
    if not ids:
        raise RestError(400, "cache: at least one image")
    if len(set(ids)) != len(ids):
        raise RestError(400, "Duplicate images in request")
    await c.call("aggregates", "get", {"id": await ref(c)})
    raise RestError(501, "cache: hvmesh's API cannot pre-cache images on an aggregate's hosts")


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/os-aggregates"
    return [
        web.get(p, index),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.put(p + "/{id}", update),
        web.delete(p + "/{id}", delete),
        web.post(p + "/{id}/action", action),
        web.post(p + "/{id}/images", images),
    ]
