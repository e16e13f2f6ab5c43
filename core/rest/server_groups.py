"""Compute os-server-groups: list, show, create and delete, on hvmesh.api.server_groups.*."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from hvmesh.core.rest.calls import PREFIX, Compute, json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.legacy_ids import every
from hvmesh.core.rest.tokens import project_of

HARD = ("affinity", "anti-affinity")
SOFT = ("soft-affinity", "soft-anti-affinity")  # from microversion 2.15


class GroupBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /os-server-groups' `server_group` object (a list of policies before 2.64)."""

    name: str
    policies: list[str]


def view(c: Compute, g: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": g["id"],
        "name": g["name"],
        "policies": [g["policy"]],
        "members": list(g.get("members") or []),
        "metadata": {},
    }
    if c.at_least(2, 13):
        out["project_id"] = project_of(g["project"])
        out["user_id"] = g["user"]
    return out


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on", "")


async def index(request: web.Request) -> web.Response:
    """GET /os-server-groups: the project's groups (every project's for an admin who asks)."""
    c = Compute(request)
    every_project = c.is_admin and truthy(request.query.get("all_projects", "false"))
    groups = [
        g
        for g in await every(c, "server_groups")
        if every_project or project_of(g["project"]) == c.token.project
    ]
    offset = c.int_query("offset") or 0
    limit = c.int_query("limit")
    groups = groups[offset:] if limit is None else groups[offset : offset + limit]
    return c.reply({"server_groups": [view(c, g) for g in groups]})


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    reply = await c.call("server_groups", "get", {"id": request.match_info["id"]})
    return c.reply({"server_group": view(c, reply["server_group"])})


async def create(request: web.Request) -> web.Response:
    c = Compute(request)
    try:
        body = msgspec.convert(await json_body(request, "server_group"), GroupBody)
    except msgspec.ValidationError as exc:
        raise RestError(400, f"server_group: {exc}") from None
    allowed = HARD + SOFT if c.at_least(2, 15) else HARD
    if len(body.policies) != 1 or body.policies[0] not in allowed:
        raise RestError(
            400,
            f"server_group.policies: exactly one of {', '.join(allowed)}, not {body.policies}",
        )
    if not 1 <= len(body.name.strip()) <= 255:
        raise RestError(400, f"server_group.name: 1 to 255 characters, not {body.name!r}")
    reply = await c.call("server_groups", "create", {"name": body.name, "policy": body.policies[0]})
    return c.reply({"server_group": view(c, reply["server_group"])})


async def delete(request: web.Request) -> web.Response:
    c = Compute(request)
    await c.call("server_groups", "delete", {"id": request.match_info["id"]})
    return c.reply(None, status=204)


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/os-server-groups"
    return [
        web.get(p, index),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.delete(p + "/{id}", delete),
    ]
