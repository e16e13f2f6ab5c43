"""Compute flavors: list, detail, show, create, delete and extra specs, on hvmesh.api.flavors.*."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import Compute, json_body
from hvmesh.core.rest.errors import RestError


def view(c: Compute, f: dict[str, Any], detail: bool = True) -> dict[str, Any]:
    """A flavor at the request's microversion: `description` (always null: hvmesh flavors
    have none) from 2.55, `extra_specs` from 2.61, `swap` 0 rather than "" from 2.75."""
    out: dict[str, Any] = {"id": f["id"], "name": f["name"], "links": c.links("flavors", f["id"])}
    if detail:
        out.update(
            {
                "ram": f["ram_mb"],
                "vcpus": f["vcpus"],
                "disk": f["disk_gb"],
                "OS-FLV-EXT-DATA:ephemeral": 0,
                "swap": 0 if c.at_least(2, 75) else "",
                "rxtx_factor": 1.0,
                "os-flavor-access:is_public": f.get("is_public", True),
                "OS-FLV-DISABLED:disabled": False,
            }
        )
    if c.at_least(2, 55):
        out["description"] = None
    if detail and c.at_least(2, 61):
        out["extra_specs"] = dict(f.get("extra_specs") or {})
    return out


async def _list(request: web.Request, detail: bool) -> web.Response:
    c = Compute(request)
    body: dict[str, Any] = {}
    for name, key in (("limit", "limit"), ("minRam", "min_ram"), ("minDisk", "min_disk")):
        value = c.int_query(name)
        if value is not None:
            body[key] = value
    if "marker" in request.query:
        body["marker"] = request.query["marker"]
    public = request.query.get("is_public", "true").lower()
    if c.is_admin and public in ("true", "1", "yes"):
        body["is_public"] = True
    elif c.is_admin and public in ("false", "0", "no"):
        body["is_public"] = False
    reply = await c.call("flavors", "list", body)
    out: dict[str, Any] = {"flavors": [view(c, f, detail) for f in reply["flavors"]]}
    more = c.next_link(reply, "flavors", "flavors/detail" if detail else "flavors")
    if more:
        out["flavors_links"] = more
    return c.reply(out)


async def index(request: web.Request) -> web.Response:
    return await _list(request, detail=False)


async def detail(request: web.Request) -> web.Response:
    return await _list(request, detail=True)


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    reply = await c.call("flavors", "get", {"id": request.match_info["id"]})
    return c.reply({"flavor": view(c, reply["flavor"])})


def _whole(body: dict[str, Any], key: str, required: bool = True) -> int | None:
    value: Any = body.get(key)
    if value is None and not required:
        return None
    try:
        number = int(value)  # Nova takes "1024" as well as 1024
    except (TypeError, ValueError):
        raise RestError(400, f"flavor.{key}: an integer, not {value!r}") from None
    return number


async def create(request: web.Request) -> web.Response:
    c = Compute(request)
    body = await json_body(request, "flavor")
    for extra in ("swap", "OS-FLV-EXT-DATA:ephemeral"):
        if body.get(extra) not in (None, 0, "0", ""):
            raise RestError(400, f"flavor.{extra}: hvmesh flavors have none (give 0)")
    if body.get("description") is not None:
        raise RestError(400, "flavor.description: hvmesh flavors have no description")
    ident = body.get("id")
    req: dict[str, Any] = {
        "name": body.get("name"),
        "vcpus": _whole(body, "vcpus"),
        "ram_mb": _whole(body, "ram"),
        "disk_gb": _whole(body, "disk", required=False) or 0,
        "is_public": bool(body.get("os-flavor-access:is_public", True)),
    }
    if ident not in (None, "", "auto"):
        req["id"] = str(ident)
    reply = await c.call("flavors", "create", req)
    return c.reply({"flavor": view(c, reply["flavor"])})


async def update(request: web.Request) -> web.Response:
    """Nova's PUT /flavors/{id} (2.55): only its description changes, and hvmesh flavors
    have none, so only a null description is taken."""
    c = Compute(request)
    if not c.at_least(2, 55):
        raise RestError(404, "PUT /flavors/{id} needs microversion 2.55")
    if not c.is_admin:
        raise RestError(403, "updating a flavor is for the admin")
    body = await json_body(request, "flavor")
    if set(body) != {"description"}:
        raise RestError(400, "flavor: only description may be updated")
    if body["description"] is not None:
        raise RestError(400, "flavor.description: hvmesh flavors have no description")
    reply = await c.call("flavors", "get", {"id": request.match_info["id"]})
    return c.reply({"flavor": view(c, reply["flavor"])})


async def delete(request: web.Request) -> web.Response:
    c = Compute(request)
    await c.call("flavors", "delete", {"id": request.match_info["id"]})
    return c.reply(None, status=202)


def routes() -> list[web.AbstractRouteDef]:
    p = "/compute/v2.1/flavors"
    return [
        web.get(p, index),
        web.get(f"{p}/detail", detail),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.put(p + "/{id}", update),
        web.delete(p + "/{id}", delete),
    ]
