"""Network v2.0 ports: list, show, create and delete, on hvmesh.api.ports.*."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.network_views import (
    PREFIX,
    Neutron,
    matches,
    port_view,
    servers_of,
    subnet_id,
)

PORT_FILTERS = ("id", "name", "network_id", "device_id", "mac_address", "status",
                "project_id", "tenant_id")  # fmt: skip


def _fixed_ips_match(c: Neutron, port: dict[str, Any]) -> bool:
    """Neutron's `fixed_ips=ip_address=A` / `fixed_ips=subnet_id=S` filters (all must hold)."""
    for raw in c.values("fixed_ips"):
        key, _, value = raw.partition("=")
        if key not in ("ip_address", "subnet_id", "ip_address_substr"):
            raise RestError(400, f"fixed_ips: filter by ip_address or subnet_id, not {key!r}")
        fixed = port["fixed_ips"][0]
        if key == "ip_address_substr":
            if value not in fixed["ip_address"]:
                return False
        elif fixed[key] != value:
            return False
    return True


async def index(request: web.Request) -> web.Response:
    c = Neutron(request)
    ports = await c.every("ports")
    # Filter on what the port itself says first; its server is looked up only if kept.
    bare = ((p, port_view(c, p, None)) for p in ports)
    kept = [p for p, v in bare if matches(c, v, PORT_FILTERS) and _fixed_ips_match(c, v)]
    servers = await servers_of(c, kept)
    views = [port_view(c, p, servers.get(p.get("server_id") or "")) for p in kept]
    return c.listing("ports", [v for v in views if matches(c, v, ("device_owner",))])


async def show(request: web.Request) -> web.Response:
    c = Neutron(request)
    port = (await c.call("ports", "get", {"id": request.match_info["id"]}))["port"]
    servers = await servers_of(c, [port])
    view = port_view(c, port, servers.get(port.get("server_id") or ""))
    return c.reply({"port": c.only_fields(view)})


def _request(body: dict[str, Any]) -> dict[str, Any]:
    """hvmesh's ports.create body from a POST /ports body; 400 naming what hvmesh cannot do."""
    network_id = body.get("network_id")
    if not isinstance(network_id, str) or not network_id:
        raise RestError(400, "port.network_id: the network the port is on")
    req: dict[str, Any] = {"network": network_id}
    name = body.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise RestError(400, "port.name: a string")
        req["name"] = name
    if body.get("device_id"):
        raise RestError(400, "port.device_id: a port is bound by the server that uses it")
    if body.get("admin_state_up", True) is not True:
        raise RestError(400, "port.admin_state_up: hvmesh ports are always up")
    fixed = body.get("fixed_ips") or []
    if not isinstance(fixed, list) or len(fixed) > 1:
        raise RestError(400, "port.fixed_ips: hvmesh ports have one address")
    if fixed:
        entry = fixed[0]
        if not isinstance(entry, dict):
            raise RestError(400, "port.fixed_ips: [{ip_address, subnet_id}]")
        wanted_subnet = entry.get("subnet_id")
        if wanted_subnet is not None and wanted_subnet != subnet_id(network_id):
            raise RestError(400, f"port.fixed_ips: subnet {wanted_subnet} is not the network's")
        if entry.get("ip_address"):
            req["fixed_ip"] = entry["ip_address"]
    mac = body.get("mac_address")
    if mac is not None:
        req["mac"] = mac
    return req


async def create(request: web.Request) -> web.Response:
    c = Neutron(request)
    body = await json_body(request, "port")
    port = (await c.call("ports", "create", _request(body)))["port"]
    return c.reply({"port": port_view(c, port, None)}, status=201)


async def delete(request: web.Request) -> web.Response:
    c = Neutron(request)
    await c.call("ports", "delete", {"id": request.match_info["id"]})
    return c.reply(None, status=204)


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/ports"
    return [
        web.get(p, index),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.delete(p + "/{id}", delete),
    ]
