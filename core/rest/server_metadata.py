"""Compute server metadata: /servers/{id}/metadata and its items, on hvmesh.api.servers.update."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import Compute
from hvmesh.core.rest.errors import RestError


async def _body(request: web.Request, key: str) -> dict[str, Any]:
    try:
        raw = await request.json()
    except ValueError:
        raise RestError(400, "malformed JSON in the request body") from None
    inner = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(inner, dict) or not all(isinstance(v, str) for v in inner.values()):
        raise RestError(400, f"the request body needs a {key!r} object of strings")
    return inner


async def _metadata(c: Compute, ident: str) -> dict[str, str]:
    return dict((await c.call("servers", "get", {"id": ident}))["server"]["metadata"])


async def index(request: web.Request) -> web.Response:
    c = Compute(request)
    return c.reply({"metadata": await _metadata(c, request.match_info["id"])})


async def _update(request: web.Request, replace: bool) -> web.Response:
    c = Compute(request)
    items = await _body(request, "metadata")
    body = {"id": request.match_info["id"], "metadata": items, "replace_metadata": replace}
    reply = await c.call("servers", "update", body)
    return c.reply({"metadata": reply["server"]["metadata"]})


async def merge(request: web.Request) -> web.Response:
    """POST: the items given are set, the others kept."""
    return await _update(request, replace=False)


async def replace(request: web.Request) -> web.Response:
    """PUT: the items given become the whole set."""
    return await _update(request, replace=True)


async def show_item(request: web.Request) -> web.Response:
    c = Compute(request)
    key = request.match_info["key"]
    metadata = await _metadata(c, request.match_info["id"])
    if key not in metadata:
        raise RestError(404, f"metadata item {key!r} not found")
    return c.reply({"meta": {key: metadata[key]}})


async def set_item(request: web.Request) -> web.Response:
    c = Compute(request)
    key = request.match_info["key"]
    meta = await _body(request, "meta")
    if list(meta) != [key]:
        raise RestError(400, f"meta: one item, and its key must be the URL's {key!r}")
    await c.call("servers", "update", {"id": request.match_info["id"], "metadata": meta})
    return c.reply({"meta": meta})


async def delete_item(request: web.Request) -> web.Response:
    c = Compute(request)
    key, ident = request.match_info["key"], request.match_info["id"]
    if key not in await _metadata(c, ident):
        raise RestError(404, f"metadata item {key!r} not found")
    await c.call("servers", "update", {"id": ident, "metadata": {key: None}})
    return c.reply(None, status=204)


def routes() -> list[web.AbstractRouteDef]:
    p = "/compute/v2.1/servers/{id}/metadata"
    return [
        web.get(p, index),
        web.post(p, merge),
        web.put(p, replace),
        web.get(p + "/{key}", show_item),
        web.put(p + "/{key}", set_item),
        web.delete(p + "/{key}", delete_item),
    ]
