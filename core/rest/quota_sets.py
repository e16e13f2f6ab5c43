"""Compute quotas, limits and usage: os-quota-sets, limits and os-simple-tenant-usage, on NATS."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.rest.calls import Compute, json_body
from hvmesh.core.rest.errors import RestError

LOG = log.get_logger(__name__)

# The quotas hvmesh counts, by their Nova names (also hvmesh.api.quotas.*'s).
COUNTED = (
    "instances",
    "cores",
    "ram",
    "key_pairs",
    "metadata_items",
    "server_groups",
    "server_group_members",
)
# Nova's quotas hvmesh has no resource for: shown unlimited (-1), never set.
INJECTED = ("injected_files", "injected_file_content_bytes", "injected_file_path_bytes")
NETWORK_PROXIES = ("fixed_ips", "floating_ips", "security_groups", "security_group_rules")
# hvmesh.api.quotas.show's quota -> what /detail's in_use reads in limits.show's absolute.
IN_USE = {
    "instances": "totalInstancesUsed",
    "cores": "totalCoresUsed",
    "ram": "totalRAMUsed",
    "server_groups": "totalServerGroupsUsed",
}
# Absolute limits Nova shows up to 2.35 (network proxies) and 2.38 (image metadata).
PROXY_LIMITS = ("maxSecurityGroupRules", "maxSecurityGroups", "maxTotalFloatingIps")
PROXY_USED = ("totalFloatingIpsUsed", "totalSecurityGroupsUsed")
TRUE = ("1", "true", "yes", "on")


def _uncounted(c: Compute) -> tuple[str, ...]:
    """Nova's quotas hvmesh does not count, at this microversion (2.36 drops the proxies)."""
    return INJECTED if c.at_least(2, 36) else INJECTED + NETWORK_PROXIES


def _no_user(c: Compute) -> None:
    if "user_id" in c.request.query:
        raise RestError(400, "user_id: hvmesh quotas are per project, not per user")


def quota_view(c: Compute, quota_set: dict[str, Any], with_id: bool = True) -> dict[str, Any]:
    """Nova's quota_set from hvmesh's: the counted quotas, then the others as unlimited."""
    out: dict[str, Any] = {"id": quota_set["id"]} if with_id else {}
    out.update({name: quota_set.get(name, -1) for name in COUNTED})
    out.update({name: -1 for name in _uncounted(c)})
    out.update({k: v for k, v in quota_set.items() if k.startswith("CUSTOM_")})
    return out


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    _no_user(c)
    reply = await c.call("quotas", "show", {"project": request.match_info["project"]})
    return c.reply({"quota_set": quota_view(c, reply["quota_set"])})


async def detail(request: web.Request) -> web.Response:
    """GET /os-quota-sets/{project}/detail: each quota's limit, in_use and reserved (0)."""
    c = Compute(request)
    _no_user(c)
    project = request.match_info["project"]
    limits = (await c.call("quotas", "show", {"project": project}))["quota_set"]
    absolute = (await c.call("limits", "show", {"project": project}))["limits"]["absolute"]
    out: dict[str, Any] = {"id": project}
    for name, value in quota_view(c, limits, with_id=False).items():
        used = absolute.get(IN_USE[name], 0) if name in IN_USE else 0
        out[name] = {"limit": value, "in_use": used, "reserved": 0}
    return c.reply({"quota_set": out})


async def defaults(request: web.Request) -> web.Response:
    c = Compute(request)
    reply = await c.call("quotas", "defaults", {})
    return c.reply({"quota_set": quota_view(c, {**reply["quota_set"], "id": "defaults"})})


def _limit(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise RestError(400, f"quota_set.{name}: an integer, not {value!r}")
    try:
        number = int(value)  # Nova takes "10" as well as 10
    except (TypeError, ValueError):
        raise RestError(400, f"quota_set.{name}: an integer, not {value!r}") from None
    if number < -1:
        raise RestError(400, f"quota_set.{name}: -1 (unlimited) or more, not {number}")
    return number


def set_request(c: Compute, project: str, body: dict[str, Any]) -> dict[str, Any]:
    """hvmesh.api.quotas.set's body from Nova's PUT /os-quota-sets/{project} body."""
    req: dict[str, Any] = {"project": project}
    uncounted = _uncounted(c)
    for name, value in body.items():
        if name == "force":
            if not isinstance(value, bool) and str(value).lower() not in (*TRUE, "0", "false"):
                raise RestError(400, f"quota_set.force: a boolean, not {value!r}")
            continue  # hvmesh always allows a limit below the usage
        if name in COUNTED:
            req[name] = _limit(name, value)
        elif name in uncounted:
            raise RestError(400, f"quota_set.{name}: hvmesh has no such resource to limit")
        else:
            raise RestError(400, f"quota_set.{name}: not a quota")
    if len(req) == 1:
        raise RestError(400, "quota_set: give at least one quota to set")
    return req


async def update(request: web.Request) -> web.Response:
    c = Compute(request)
    _no_user(c)
    project = request.match_info["project"]
    req = set_request(c, project, await json_body(request, "quota_set"))
    reply = await c.call("quotas", "set", req)
    LOG.info("rest.quotas_set", project=project, by=c.token.user)
    return c.reply({"quota_set": quota_view(c, reply["quota_set"], with_id=False)})


async def revert(request: web.Request) -> web.Response:
    Compute(request)
    raise RestError(
        501, "reverting a project's quotas to the defaults (DELETE) is not implemented yet"
    )


async def limits(request: web.Request) -> web.Response:
    """GET /limits: the absolute limits and usage (of `tenant_id`'s project, for the admin)."""
    c = Compute(request)
    project = request.query.get("tenant_id") or request.query.get("project_id")
    reply = await c.call("limits", "show", {"project": project} if project else {})
    absolute: dict[str, Any] = dict(reply["limits"]["absolute"])
    absolute.update({"maxPersonality": -1, "maxPersonalitySize": -1})
    absolute["maxImageMeta"] = absolute.get("maxServerMeta", -1)
    if not c.at_least(2, 36):
        absolute.update({name: -1 for name in PROXY_LIMITS})
        absolute.update({name: 0 for name in PROXY_USED})
    return c.reply({"limits": {"absolute": absolute, "rate": []}})


def _window(request: web.Request) -> dict[str, Any]:
    return {k: request.query[k] for k in ("start", "end") if request.query.get(k)}


def usage_view(usage: dict[str, Any], detailed: bool) -> dict[str, Any]:
    """Nova's tenant_usage; without `detailed`, no server_usages (as Nova's index)."""
    return usage if detailed else {k: v for k, v in usage.items() if k != "server_usages"}


async def usage_show(request: web.Request) -> web.Response:
    """GET /os-simple-tenant-usage/{project}: one project's usage, server by server."""
    c = Compute(request)
    body = {"project": request.match_info["project"], **_window(request)}
    usage = (await c.call("usage", "show", body))["tenant_usage"]
    return c.reply({"tenant_usage": usage if usage.get("server_usages") else {}})


async def _projects(c: Compute) -> list[str]:
    """The projects with servers now (and the caller's own), read page by page."""
    found = {c.token.project}
    body: dict[str, Any] = {"all_projects": True}
    while True:
        reply = await c.call("servers", "list", body)
        found.update(s["project"] for s in reply["servers"] if s.get("project"))
        more = reply.get("servers_links") or []
        if not more or not reply["servers"]:
            return sorted(found)
        body = {"all_projects": True, "marker": more[0]["marker"]}


async def usage_index(request: web.Request) -> web.Response:
    """GET /os-simple-tenant-usage (admin): every project's usage that has any."""
    c = Compute(request)
    if not c.is_admin:
        raise RestError(403, "listing every project's usage is for the admin")
    detailed = request.query.get("detailed", "").lower() in TRUE
    usages = []
    for project in await _projects(c):
        body = {"project": project, **_window(request)}
        usage = (await c.call("usage", "show", body))["tenant_usage"]
        if usage.get("server_usages"):
            usages.append(usage_view(usage, detailed))
    return c.reply({"tenant_usages": usages})


def routes() -> list[web.AbstractRouteDef]:
    p = "/compute/v2.1"
    q = f"{p}/os-quota-sets/{{project}}"
    return [
        web.get(f"{p}/limits", limits),
        web.get(q, show),
        web.put(q, update),
        web.delete(q, revert),
        web.get(f"{q}/defaults", defaults),
        web.get(f"{q}/detail", detail),
        web.get(f"{p}/os-simple-tenant-usage", usage_index),
        web.get(f"{p}/os-simple-tenant-usage/{{project}}", usage_show),
    ]
