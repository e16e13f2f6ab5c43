"""Compute os-server-groups: list, show, create and delete, on hvmesh.api.server_groups.*."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from hvmesh.core.rest.calls import PREFIX, Compute, json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.legacy_ids import every, only_query
from hvmesh.core.rest.tokens import project_of

HARD = ("affinity", "anti-affinity")
SOFT = ("soft-affinity", "soft-anti-affinity")  # from microversion 2.15


class GroupBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /os-server-groups' `server_group` object before 2.64: a list of one policy."""

    name: str
    policies: list[str]


class Rules(msgspec.Struct, forbid_unknown_fields=True):
    """2.64's `rules`: Nova's one rule, a positive integer (or a string of digits)."""

    max_server_per_host: int | str | None = None


class GroupBodyV264(msgspec.Struct, forbid_unknown_fields=True):
    """POST /os-server-groups' `server_group` object from 2.64: one `policy` and its `rules`."""

    name: str
    policy: str
    rules: Rules = msgspec.field(default_factory=Rules)


def rules_of(g: dict[str, Any]) -> dict[str, int]:
    """2.64's `rules`: `max_server_per_host` of an anti-affinity group when it is not the
    default of 1 (Nova's group without the rule), else empty."""
    most = int(g.get("max_server_per_host") or 1)
    if g["policy"] != "anti-affinity" or most == 1:
        return {}
    return {"max_server_per_host": most}


def view(c: Compute, g: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": g["id"], "name": g["name"]}
    if c.at_least(2, 64):
        out["policy"] = g["policy"]
        out["rules"] = rules_of(g)
    else:
        out["policies"] = [g["policy"]]
        out["metadata"] = {}
    out["members"] = list(g.get("members") or [])
    if c.at_least(2, 13):
        out["project_id"] = project_of(g["project"])
        out["user_id"] = g["user"]
    return out


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on", "")


async def index(request: web.Request) -> web.Response:
    """GET /os-server-groups: the project's groups (every project's for an admin who asks)."""
    c = Compute(request)
    if c.at_least(2, 75):
        only_query(c, ("all_projects", "limit", "offset"))
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


def max_per_host(rules: Rules) -> int | None:
    raw = rules.max_server_per_host
    if raw is None:
        return None
    if isinstance(raw, str) and not raw.isdigit():
        raise RestError(400, f"server_group.rules.max_server_per_host: {raw!r} is not an integer")
    if int(raw) < 1:
        raise RestError(400, f"server_group.rules.max_server_per_host: 1 or more, not {raw}")
    return int(raw)


async def create(request: web.Request) -> web.Response:
    c = Compute(request)
    raw = await json_body(request, "server_group")
    req: dict[str, Any] = {}
    try:
        if c.at_least(2, 64):
            new = msgspec.convert(raw, GroupBodyV264)
            name, policies = new.name, [new.policy]
            most = max_per_host(new.rules)
            if most is not None and new.policy != "anti-affinity":
                raise RestError(
                    400, "server_group.rules: Only anti-affinity policy supports rules."
                )
            if most is not None:
                req["max_server_per_host"] = most
        else:
            old = msgspec.convert(raw, GroupBody)
            name, policies = old.name, old.policies
    except msgspec.ValidationError as exc:
        raise RestError(400, f"server_group: {exc}") from None
    allowed = HARD + SOFT if c.at_least(2, 15) else HARD
    field = "policy" if c.at_least(2, 64) else "policies"
    if len(policies) != 1 or policies[0] not in allowed:
        wrong = policies[0] if c.at_least(2, 64) else policies
        raise RestError(
            400, f"server_group.{field}: exactly one of {', '.join(allowed)}, not {wrong}"
        )
    if not 1 <= len(name.strip()) <= 255:
        raise RestError(400, f"server_group.name: 1 to 255 characters, not {name!r}")
    req.update({"name": name, "policy": policies[0]})
    reply = await c.call("server_groups", "create", req)
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
