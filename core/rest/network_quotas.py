"""Neutron's quotas: hvmesh limits no network resource, so every quota is unlimited (-1)."""

from __future__ import annotations

from aiohttp import web

from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.network_views import Neutron

# Neutron's core, L3 and security group quotas, in its own order.
RESOURCES = (
    "network",
    "subnet",
    "subnetpool",
    "port",
    "router",
    "floatingip",
    "rbac_policy",
    "security_group",
    "security_group_rule",
)


def _project(c: Neutron) -> str:
    """The project asked about: any for the admin, else only the caller's own (403)."""
    project = c.request.match_info["project"]
    if project != c.token.project and not c.is_admin:
        raise RestError(403, f"the quotas of project {project} are not yours to read")
    return project


def unlimited() -> dict[str, int]:
    return {name: -1 for name in RESOURCES}


async def show(request: web.Request) -> web.Response:
    c = Neutron(request)
    _project(c)
    return c.reply({"quota": unlimited()})


async def defaults(request: web.Request) -> web.Response:
    c = Neutron(request)
    _project(c)
    return c.reply({"quota": unlimited()})


async def details(request: web.Request) -> web.Response:
    """GET /quotas/{project}/details: -1 limits, with the project's networks, subnets
    (one per network with an address range) and ports in use."""
    c = Neutron(request)
    project = _project(c)
    networks = [n for n in await c.every("networks") if n.get("project") == project]
    ports = [p for p in await c.every("ports") if p.get("project") == project]
    used = {
        "network": len(networks),
        "subnet": sum(1 for n in networks if n.get("cidr")),
        "port": len(ports),
    }
    quota = {name: {"limit": -1, "used": used.get(name, 0), "reserved": 0} for name in RESOURCES}
    return c.reply({"quota": quota})


async def index(request: web.Request) -> web.Response:
    """GET /quotas: the projects with limits other than the defaults: none."""
    c = Neutron(request)
    if not c.is_admin:
        raise RestError(403, "listing every project's quotas is for the admin")
    return c.reply({"quotas": []})


async def update(request: web.Request) -> web.Response:
    Neutron(request)
    raise RestError(400, "hvmesh has no network quotas to set: every one is unlimited")


def routes() -> list[web.AbstractRouteDef]:
    p = "/network/v2.0/quotas"
    return [
        web.get(p, index),
        web.get(p + "/{project}", show),
        web.put(p + "/{project}", update),
        web.get(p + "/{project}/default", defaults),
        web.get(p + "/{project}/details", details),
    ]
