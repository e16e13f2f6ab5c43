"""Compute flavor extra specs: /flavors/{id}/os-extra_specs and its keys, on hvmesh.api.flavors."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import Compute, json_body
from hvmesh.core.rest.errors import RestError


def _strings(specs: dict[str, Any]) -> dict[str, str]:
    """Extra spec values as Nova takes them: strings (numbers and booleans written out)."""
    out: dict[str, str] = {}
    for key, value in specs.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        else:
            raise RestError(400, f"extra_specs.{key}: a string, number or boolean")
    return out


async def _specs(c: Compute, flavor: str) -> dict[str, str]:
    return dict((await c.call("flavors", "get", {"id": flavor}))["flavor"]["extra_specs"])


async def index(request: web.Request) -> web.Response:
    c = Compute(request)
    return c.reply({"extra_specs": await _specs(c, request.match_info["id"])})


async def merge(request: web.Request) -> web.Response:
    """POST: the specs given are set (admin), the others kept; the set given is answered."""
    c = Compute(request)
    specs = _strings(await json_body(request, "extra_specs"))
    body = {"id": request.match_info["id"], "extra_specs": specs}
    await c.call("flavors", "set_extra_specs", body)
    return c.reply({"extra_specs": specs})


async def show_key(request: web.Request) -> web.Response:
    c = Compute(request)
    key = request.match_info["key"]
    specs = await _specs(c, request.match_info["id"])
    if key not in specs:
        raise RestError(
            404, f"Flavor {request.match_info['id']} has no extra specs with key {key}."
        )
    return c.reply({key: specs[key]})


async def set_key(request: web.Request) -> web.Response:
    """PUT /{key}: `{key: value}`, the key the URL's."""
    c = Compute(request)
    key = request.match_info["key"]
    try:
        body = await request.json()
    except ValueError:
        raise RestError(400, "malformed JSON in the request body") from None
    if not isinstance(body, dict) or list(body) != [key]:
        raise RestError(400, f"the body is one extra spec, and its key must be the URL's {key!r}")
    specs = _strings(body)
    await c.call(
        "flavors", "set_extra_specs", {"id": request.match_info["id"], "extra_specs": specs}
    )
    return c.reply(specs)


async def delete_key(request: web.Request) -> web.Response:
    c = Compute(request)
    key, flavor = request.match_info["key"], request.match_info["id"]
    if key not in await _specs(c, flavor):
        raise RestError(404, f"Flavor {flavor} has no extra specs with key {key}.")
    await c.call("flavors", "set_extra_specs", {"id": flavor, "extra_specs": {key: None}})
    return c.reply(None, status=200)


def routes() -> list[web.AbstractRouteDef]:
    p = "/compute/v2.1/flavors/{id}/os-extra_specs"
    return [
        web.get(p, index),
        web.post(p, merge),
        web.get(p + "/{key}", show_key),
        web.put(p + "/{key}", set_key),
        web.delete(p + "/{key}", delete_key),
    ]
