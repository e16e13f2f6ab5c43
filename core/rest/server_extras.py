"""A server's action log and interfaces: os-instance-actions and os-interface, on NATS."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.rest import microversion
from hvmesh.core.rest.calls import PREFIX, Compute, json_body
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
MAX_LIMIT = 1000  # the most actions one page holds (Nova's default [api] max_limit)


def when(t: float | None) -> str | None:
    """Nova's instance-action time format (microseconds, no zone)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def updated_at(a: dict[str, Any]) -> float:
    """When an action last changed: its start, an event's start or end, or its end."""
    times = [a.get("start_time"), a.get("finish_time")]
    for e in a.get("events") or []:
        times += [e.get("start_time"), e.get("finish_time")]
    return max(t for t in times if t is not None)


def action_view(c: Compute, a: dict[str, Any]) -> dict[str, Any]:
    out = {
        "action": ACTION_NAMES.get(a["action"], a["action"]),
        "instance_uuid": a["server_id"],
        "message": a.get("message"),
        "project_id": a["project"],
        "request_id": a["request_id"],
        "start_time": when(a.get("start_time")),
        "user_id": a["user"],
    }
    if c.at_least(2, 58):
        out["updated_at"] = when(updated_at(a))
    return out


def host_id(host: str | None, project: str) -> str:
    """Nova's hashed host id: sha224 of the project and the host, empty without a host."""
    return hashlib.sha224((project + host).encode()).hexdigest() if host else ""


def event_view(c: Compute, e: dict[str, Any], project: str) -> dict[str, Any]:
    """One event: traceback, host and details (2.84) for the admin; hostId from 2.62."""
    out = {
        "event": e["event"],
        "start_time": when(e.get("start_time")),
        "finish_time": when(e.get("finish_time")),
        "result": e.get("result"),
    }
    host = e.get("host") if c.is_admin else None  # tenants are never told the host
    if c.is_admin:
        out["traceback"] = e.get("details") or None
    if c.at_least(2, 62):
        if c.is_admin:
            out["host"] = host or ""
        out["hostId"] = host_id(host, project)
    if c.at_least(2, 84) and c.is_admin:
        out["details"] = e.get("details") or None
    return out


def only_query(c: Compute, allowed: set[str]) -> None:
    """A 400 naming the first query parameter this request does not take at its version."""
    unknown = sorted(set(c.request.query) - allowed)
    if unknown:
        raise RestError(
            400,
            f"{unknown[0]}: not a query parameter of this request at microversion "
            f"{microversion.text(c.version)}",
        )


def moment(c: Compute, name: str) -> float | None:
    """A time filter of the query string (ISO 8601, UTC when no zone is given)."""
    raw = c.request.query.get(name)
    if raw is None:
        return None
    try:
        t = datetime.fromisoformat(raw)
    except ValueError:
        raise RestError(400, f"{name}: {raw!r} is not an ISO 8601 date and time") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


async def _all_actions(c: Compute, server: str) -> list[dict[str, Any]]:
    """Every action on the server, newest first, read page by page."""
    found: list[dict[str, Any]] = []
    body: dict[str, Any] = {"id": server}
    while True:
        reply = await c.call("servers", "events.list", body)
        found.extend(reply["instance_actions"])
        more = reply.get("instance_actions_links") or []
        if not more or not reply["instance_actions"]:
            return found
        body = {"id": server, "marker": more[0]["marker"]}


class ActionPage:
    """From 2.58, a list's query: `limit`, `marker`, changes-since (and -before from 2.66)."""

    def __init__(self, c: Compute) -> None:
        allowed = {"limit", "marker", "changes-since"}
        if c.at_least(2, 66):
            allowed.add("changes-before")
        only_query(c, allowed)
        self.since, self.before = moment(c, "changes-since"), moment(c, "changes-before")
        if self.since is not None and self.before is not None and self.before < self.since:
            raise RestError(400, "changes-before: must not be earlier than changes-since")
        asked = c.int_query("limit")
        self.limit = MAX_LIMIT if asked is None else min(asked, MAX_LIMIT)
        self.marker = c.request.query.get("marker")

    def select(self, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The actions after the marker whose update time passes the filters, up to limit."""
        if self.marker is not None:
            ids = [a["request_id"] for a in found]
            if self.marker not in ids:
                raise RestError(400, f"marker {self.marker} not found")
            found = found[ids.index(self.marker) + 1 :]
        kept = [
            a
            for a in found
            if (self.since is None or updated_at(a) >= self.since)
            and (self.before is None or updated_at(a) <= self.before)
        ]
        return kept[: self.limit]


async def actions_index(request: web.Request) -> web.Response:
    """GET /servers/{id}/os-instance-actions: the actions on the server, newest first;
    paged and filtered by update time from 2.58 (the whole log before)."""
    c = Compute(request)
    server = request.match_info["id"]
    if not c.at_least(2, 58):
        found = await _all_actions(c, server)
        return c.reply({"instanceActions": [action_view(c, a) for a in found]})
    paging = ActionPage(c)
    found = await _all_actions(c, server)
    for i, a in enumerate(found):
        if a.get("finish_time") is None:  # a running action's last change is in its events
            body = {"id": server, "request_id": a["request_id"]}
            found[i] = (await c.call("servers", "events.get", body))["instance_action"]
    page = paging.select(found)
    out: dict[str, Any] = {"instanceActions": [action_view(c, a) for a in page]}
    if paging.limit and len(page) == paging.limit:
        query = {k: v for k, v in request.query.items() if k != "marker"}
        query["marker"] = page[-1]["request_id"]
        href = f"{c.base}{PREFIX}/servers/{server}/os-instance-actions?{urlencode(query)}"
        out["links"] = [{"rel": "next", "href": href}]
    return c.reply(out)


async def action_show(request: web.Request) -> web.Response:
    """GET /servers/{id}/os-instance-actions/{request_id}: its events for the admin, and
    from 2.51 for whoever sees the server (without traceback, host and details)."""
    c = Compute(request)
    body = {"id": request.match_info["id"], "request_id": request.match_info["request_id"]}
    a = (await c.call("servers", "events.get", body))["instance_action"]
    # Before 2.51 a tenant gets an empty list where Nova leaves the key out, which the
    # openstack CLI cannot show.
    shown = c.is_admin or c.at_least(2, 51)
    events = (a.get("events") or []) if shown else []
    out = {**action_view(c, a), "events": [event_view(c, e, a["project"]) for e in events]}
    return c.reply({"instanceAction": out})


def interface_view(c: Compute, port: dict[str, Any]) -> dict[str, Any]:
    """Nova's interfaceAttachment; from 2.70 with `tag`, null: hvmesh tags no devices."""
    out: dict[str, Any] = {
        "port_id": port["id"],
        "net_id": port["network_id"],
        "mac_addr": port["mac"],
        "port_state": port.get("status", "DOWN"),
        "fixed_ips": [{"subnet_id": subnet_id(port["network_id"]), "ip_address": port["ip"]}],
    }
    if c.at_least(2, 70):
        out["tag"] = None
    return out


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
    return c.reply({"interfaceAttachments": [interface_view(c, p) for p in ports]})


async def interface_show(request: web.Request) -> web.Response:
    c = Compute(request)
    port = await _attached(c, await _server_id(c), request.match_info["port_id"])
    return c.reply({"interfaceAttachment": interface_view(c, port)})


def attach_request(body: dict[str, Any]) -> dict[str, Any]:
    """The attach-interface action's fields from Nova's interfaceAttachment."""
    if "tag" in body:
        raise RestError(400, "interfaceAttachment.tag: hvmesh cannot tag a server's devices")
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
    return c.reply({"interfaceAttachment": interface_view(c, port)})


async def interface_detach(request: web.Request) -> web.Response:
    c = Compute(request)
    server_id = await _server_id(c)
    port = await _attached(c, server_id, request.match_info["port_id"])
    await c.call(
        "servers", "action", {"id": server_id, "action": "detach-interface", "port": port["id"]}
    )
    return c.reply(None, status=202)


def routes() -> list[web.AbstractRouteDef]:
    s = "/compute/v2.1/servers/{id}"
    return [
        web.get(f"{s}/os-instance-actions", actions_index),
        web.get(f"{s}/os-instance-actions/{{request_id}}", action_show),
        web.get(f"{s}/os-interface", interfaces_index),
        web.post(f"{s}/os-interface", interface_attach),
        web.get(f"{s}/os-interface/{{port_id}}", interface_show),
        web.delete(f"{s}/os-interface/{{port_id}}", interface_detach),
    ]
