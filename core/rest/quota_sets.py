"""Compute quotas, limits and usage: os-quota-sets, limits and os-simple-tenant-usage, on NATS."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.rest.calls import PREFIX, Compute, json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.server_extras import only_query

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
# Absolute limits Nova shows up to 2.35 (network proxies).
PROXY_LIMITS = ("maxSecurityGroupRules", "maxSecurityGroups", "maxTotalFloatingIps")
PROXY_USED = ("totalFloatingIpsUsed", "totalSecurityGroupsUsed")
TRUE = ("1", "true", "yes", "on")
MAX_LIMIT = 1000  # the most server usages one page holds (Nova's default [api] max_limit)


def _uncounted(c: Compute) -> tuple[str, ...]:
    """Nova's quotas hvmesh does not count, at this microversion (2.36 drops the network
    proxies, 2.57 the injected files)."""
    if c.at_least(2, 57):
        return ()
    return INJECTED if c.at_least(2, 36) else INJECTED + NETWORK_PROXIES


def _strict(c: Compute, allowed: set[str]) -> None:
    """From 2.75 a query parameter the request does not take is a 400, as Nova's."""
    if c.at_least(2, 75):
        only_query(c, allowed)


def _no_user(c: Compute) -> None:
    _strict(c, {"user_id"})
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
    """DELETE /os-quota-sets/{project}: the project's limits are the defaults again (202)."""
    c = Compute(request)
    _no_user(c)
    project = request.match_info["project"]
    await c.call("quotas", "delete", {"project": project})
    LOG.info("rest.quotas_deleted", project=project, by=c.token.user)
    return c.reply(None, status=202)


async def limits(request: web.Request) -> web.Response:
    """GET /limits: the absolute limits and usage (of `tenant_id`'s project, for the admin);
    maxImageMeta until 2.38, maxPersonality and maxPersonalitySize until 2.56."""
    c = Compute(request)
    _strict(c, {"tenant_id"})
    project = request.query.get("tenant_id") or request.query.get("project_id")
    reply = await c.call("limits", "show", {"project": project} if project else {})
    absolute: dict[str, Any] = dict(reply["limits"]["absolute"])
    if not c.at_least(2, 57):
        absolute.update({"maxPersonality": -1, "maxPersonalitySize": -1})
    if not c.at_least(2, 39):
        absolute["maxImageMeta"] = absolute.get("maxServerMeta", -1)
    if not c.at_least(2, 36):
        absolute.update({name: -1 for name in PROXY_LIMITS})
        absolute.update({name: 0 for name in PROXY_USED})
    return c.reply({"limits": {"absolute": absolute, "rate": []}})


def _window(request: web.Request) -> dict[str, Any]:
    return {k: request.query[k] for k in ("start", "end") if request.query.get(k)}


TOTALS = {  # a tenant usage's totals: each server's hours times one of its sizes
    "total_hours": None,
    "total_vcpus_usage": "vcpus",
    "total_memory_mb_usage": "memory_mb",
    "total_local_gb_usage": "local_gb",
}


def usage_view(usage: dict[str, Any], rows: list[dict[str, Any]], detailed: bool) -> dict[str, Any]:
    """Nova's tenant_usage for these server usages, totals summed over them; without
    `detailed`, no server_usages (as Nova's index)."""
    out: dict[str, Any] = {k: usage[k] for k in ("tenant_id", "start", "stop")}
    for name, size in TOTALS.items():
        out[name] = sum(r["hours"] * (r[size] if size else 1) for r in rows)
    if detailed:
        out["server_usages"] = rows
    return out


class UsagePage:
    """The server usages one answer holds: from 2.40 `limit` and `marker` (an instance
    id) page them, before then the first 1000, as Nova silently limits them."""

    def __init__(self, c: Compute, allowed: set[str]) -> None:
        _strict(c, allowed)
        self.c = c
        self.limit, self.marker = MAX_LIMIT, None
        if c.at_least(2, 40):
            asked = c.int_query("limit")
            self.limit = MAX_LIMIT if asked is None else min(asked, MAX_LIMIT)
            self.marker = c.request.query.get("marker")

    def select(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.marker is not None:
            ids = [r["instance_id"] for r in rows]
            if self.marker not in ids:
                raise RestError(400, f"marker {self.marker} not found")
            rows = rows[ids.index(self.marker) + 1 :]
        return rows[: self.limit]

    def links(self, page: list[dict[str, Any]], path: str) -> list[dict[str, str]]:
        """The next page's link from 2.40, when this one is full."""
        if not self.c.at_least(2, 40) or not self.limit or len(page) < self.limit:
            return []
        query = {k: v for k, v in self.c.request.query.items() if k != "marker"}
        query["marker"] = page[-1]["instance_id"]
        return [{"rel": "next", "href": f"{self.c.base}{PREFIX}/{path}?{urlencode(query)}"}]


async def usage_show(request: web.Request) -> web.Response:
    """GET /os-simple-tenant-usage/{project}: one project's usage, server by server."""
    c = Compute(request)
    paging = UsagePage(c, {"start", "end", "limit", "marker"})
    project = request.match_info["project"]
    usage = (await c.call("usage", "show", {"project": project, **_window(request)}))[
        "tenant_usage"
    ]
    page = paging.select(usage.get("server_usages") or [])
    out: dict[str, Any] = {"tenant_usage": usage_view(usage, page, True) if page else {}}
    if links := paging.links(page, f"os-simple-tenant-usage/{project}"):
        out["tenant_usage_links"] = links
    return c.reply(out)


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
    """GET /os-simple-tenant-usage (admin): the usage of every project that has any, its
    server usages in one order across projects (paged from 2.40), grouped by project."""
    c = Compute(request)
    if not c.is_admin:
        raise RestError(403, "listing every project's usage is for the admin")
    paging = UsagePage(c, {"start", "end", "detailed", "limit", "marker"})
    detailed = request.query.get("detailed", "").lower() in TRUE
    reports: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for project in await _projects(c):
        body = {"project": project, **_window(request)}
        usage = (await c.call("usage", "show", body))["tenant_usage"]
        reports[project] = usage
        rows.extend(usage.get("server_usages") or [])
    rows.sort(key=lambda r: (r["started_at"], r["instance_id"]))
    page = paging.select(rows)
    by_project: dict[str, list[dict[str, Any]]] = {}
    for r in page:
        by_project.setdefault(r["tenant_id"], []).append(r)
    usages = [usage_view(reports[p], mine, detailed) for p, mine in by_project.items()]
    out: dict[str, Any] = {"tenant_usages": usages}
    if links := paging.links(page, "os-simple-tenant-usage"):
        out["tenant_usages_links"] = links
    return c.reply(out)


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
