"""A server's action log and interfaces: os-instance-actions and os-interface, on NATS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.rest.calls import Compute, json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.network_views import subnet_id

LOG = log.get_logger(__name__)

# hvmesh's action names -> Nova's (instance_actions); the others are spelled alike.
ACTION_NAMES = {
    "confirm-resize": "confirmResize",
    "revert-resize": "revertResize",
    "live-migrate": "live-migration",
    "shelve-offload": "shelveOffload",
    "attach-interface": "attach_interface",
    "detach-interface": "detach_interface",
    "create-image": "createImage",
    "reset-state": "resetState",
}
ATTACH_FIELDS = frozenset(["port_id", "net_id", "fixed_ips"])


def when(t: float | None) -> str | None:
    """Nova's instance-action time format (microseconds, no zone)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def action_view(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "action": ACTION_NAMES.get(a["action"], a["action"]),
        "instance_uuid": a["server_id"],
        "message": a.get("message"),
        "project_id": a["project"],
        "request_id": a["request_id"],
        "start_time": when(a.get("start_time")),
        "user_id": a["user"],
    }


def event_view(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": e["event"],
        "start_time": when(e.get("start_time")),
        "finish_time": when(e.get("finish_time")),
        "result": e.get("result"),
        "traceback": e.get("details") or None,
    }


async def actions_index(request: web.Request) -> web.Response:
    """GET /servers/{id}/os-instance-actions: every action on the server, newest first."""
    c = Compute(request)
    found: list[dict[str, Any]] = []
    body: dict[str, Any] = {"id": request.match_info["id"]}
    while True:  # Nova pages these only from 2.58: here the whole log
        reply = await c.call("servers", "events.list", body)
        found.extend(reply["instance_actions"])
        more = reply.get("instance_actions_links") or []
        if not more or not reply["instance_actions"]:
            break
        body = {"id": request.match_info["id"], "marker": more[0]["marker"]}
    return c.reply({"instanceActions": [action_view(a) for a in found]})


async def action_show(request: web.Request) -> web.Response:
    """GET /servers/{id}/os-instance-actions/{request_id}; its events for the admin only."""
    c = Compute(request)
    body = {"id": request.match_info["id"], "request_id": request.match_info["request_id"]}
    a = (await c.call("servers", "events.get", body))["instance_action"]
    # Events are the admin's until 2.51, as Nova's policy; a tenant gets an empty list
    # where Nova leaves the key out, which the openstack CLI cannot show.
    events = (a.get("events") or []) if c.is_admin else []
    out = {**action_view(a), "events": [event_view(e) for e in events]}
    return c.reply({"instanceAction": out})


def interface_view(port: dict[str, Any]) -> dict[str, Any]:
    return {
        "port_id": port["id"],
        "net_id": port["network_id"],
        "mac_addr": port["mac"],
        "port_state": port.get("status", "DOWN"),
        "fixed_ips": [{"subnet_id": subnet_id(port["network_id"]), "ip_address": port["ip"]}],
    }


async def server_ports(c: Compute, server_id: str) -> list[dict[str, Any]]:
    """The ports bound to a server, read page by page (as Nova asks Neutron by device_id)."""
    found: list[dict[str, Any]] = []
    body: dict[str, Any] = {}
    while True:
        reply = await c.call("ports", "list", body)
        found.extend(p for p in reply["ports"] if p.get("server_id") == server_id)
        more = reply.get("ports_links") or []
        if not more or not reply["ports"]:
            return found
        body = {"marker": more[0]["marker"]}


async def _server_id(c: Compute) -> str:
    reply = await c.call("servers", "get", {"id": c.request.match_info["id"]})
    return str(reply["server"]["id"])


async def _attached(c: Compute, server_id: str, port: str) -> dict[str, Any]:
    for p in await server_ports(c, server_id):
        if port in (p["id"], p.get("name")):
            return p
    raise RestError(404, f"port {port} is not attached to server {server_id}")


async def interfaces_index(request: web.Request) -> web.Response:
    c = Compute(request)
    ports = await server_ports(c, await _server_id(c))
    return c.reply({"interfaceAttachments": [interface_view(p) for p in ports]})


async def interface_show(request: web.Request) -> web.Response:
    c = Compute(request)
    port = await _attached(c, await _server_id(c), request.match_info["port_id"])
    return c.reply({"interfaceAttachment": interface_view(port)})


def attach_request(body: dict[str, Any]) -> dict[str, Any]:
    """The attach-interface action's fields from Nova's interfaceAttachment."""
    unknown = sorted(set(body) - ATTACH_FIELDS)
    if unknown:
        raise RestError(400, f"interfaceAttachment: {', '.join(unknown)} not supported")
    port, net, ips = body.get("port_id"), body.get("net_id"), body.get("fixed_ips")
    if bool(port) == bool(net):
        raise RestError(400, "interfaceAttachment: give either port_id or net_id")
    if port:
        if ips:
            raise RestError(400, "interfaceAttachment.fixed_ips: goes with net_id, not port_id")
        return {"port": str(port)}
    req: dict[str, Any] = {"network": str(net)}
    if ips is not None:
        if (
            not isinstance(ips, list)
            or len(ips) != 1
            or not isinstance(ips[0], dict)
            or not isinstance(ips[0].get("ip_address"), str)
        ):
            raise RestError(400, "interfaceAttachment.fixed_ips: one {ip_address}")
        req["fixed_ip"] = ips[0]["ip_address"]
    return req


async def interface_attach(request: web.Request) -> web.Response:
    """POST /servers/{id}/os-interface: a given free port, or a new one on a network."""
    c = Compute(request)
    req = attach_request(await json_body(request, "interfaceAttachment"))
    server_id = await _server_id(c)
    before = {p["id"] for p in await server_ports(c, server_id)}
    await c.call("servers", "action", {"id": server_id, "action": "attach-interface", **req})
    if "port" in req:
        port = (await c.call("ports", "get", {"id": req["port"]}))["port"]
    else:
        network = (await c.call("networks", "get", {"id": req["network"]}))["network"]["id"]
        new = [
            p
            for p in await server_ports(c, server_id)
            if p["id"] not in before and p["network_id"] == network
        ]
        if not new:
            raise RestError(500, f"the port attached to server {server_id} was not found")
        port = new[-1]
    LOG.info("rest.interface_attached", server=server_id, port=port["id"])
    return c.reply({"interfaceAttachment": interface_view(port)})


async def interface_detach(request: web.Request) -> web.Response:
    c = Compute(request)
    server_id = await _server_id(c)
    port = await _attached(c, server_id, request.match_info["port_id"])
    await c.call(
        "servers", "action", {"id": server_id, "action": "detach-interface", "port": port["id"]}
    )
    return c.reply(None, status=202)


async def migrations(request: web.Request) -> web.Response:
    Compute(request)
    raise RestError(501, "listing migrations (os-migrations) is not implemented yet")


def routes() -> list[web.AbstractRouteDef]:
    s = "/compute/v2.1/servers/{id}"
    return [
        web.get(f"{s}/os-instance-actions", actions_index),
        web.get(f"{s}/os-instance-actions/{{request_id}}", action_show),
        web.get(f"{s}/os-interface", interfaces_index),
        web.post(f"{s}/os-interface", interface_attach),
        web.get(f"{s}/os-interface/{{port_id}}", interface_show),
        web.delete(f"{s}/os-interface/{{port_id}}", interface_detach),
        web.get("/compute/v2.1/os-migrations", migrations),
    ]
