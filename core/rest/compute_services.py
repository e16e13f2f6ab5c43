"""Compute os-services and os-availability-zone, on hvmesh.api.services and .availability_zones."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import PREFIX, Compute, json_object
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import iso
from hvmesh.core.rest.legacy_ids import only_query, public_id


def when(t: float | None) -> str | None:
    return None if t is None else iso(t)


def service_view(c: Compute, s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": public_id(c, "service", s["id"]),
        "binary": s["binary"],
        "host": s["host"],
        "zone": s["zone"],
        "status": s["status"],
        "state": s["state"],
        "updated_at": when(s.get("updated_at")),
        "disabled_reason": s.get("disabled_reason"),
    }
    if c.at_least(2, 11):
        out["forced_down"] = False
    return out


async def services(request: web.Request) -> web.Response:
    """GET /os-services, with Nova's `host` and `binary` filters (nothing else from 2.75)."""
    c = Compute(request)
    if c.at_least(2, 75):
        only_query(c, ("host", "binary"))
    reply = await c.call("services", "list", {})
    rows = [
        s
        for s in reply["services"]
        if all(request.query.get(k) in (None, "", s[k]) for k in ("host", "binary"))
    ]
    return c.reply({"services": [service_view(c, s) for s in rows]})


LEGACY_ACTIONS = ("enable", "disable", "disable-log-reason", "force-down")


async def service_update(request: web.Request) -> web.Response:
    """PUT /os-services/{action} (enable, disable, disable-log-reason; before 2.53, with
    `host` and `binary`) or /os-services/{uuid} (2.53: `status`, `disabled_reason`):
    services.set on a compute service. Forcing a service down is not hvmesh's (a host is
    down when its heartbeat stops)."""
    c = Compute(request)
    target = request.match_info["action"]
    body = await json_object(request)
    if "forced_down" in body or target == "force-down":
        raise RestError(400, "forced_down: hvmesh takes a host for down when its heartbeat stops")
    if not c.at_least(2, 53) or target in LEGACY_ACTIONS:
        if target not in LEGACY_ACTIONS or c.at_least(2, 53):
            raise RestError(404, f"Unknown action {target!r}")
        host, binary = body.get("host"), body.get("binary")
        if not isinstance(host, str) or binary != "hvmesh-compute":
            raise RestError(400, "host and binary hvmesh-compute: only compute services change")
        req: dict[str, Any] = {
            "host": host,
            "status": "enabled" if target == "enable" else "disabled",
        }
        if target == "disable-log-reason":
            req["disabled_reason"] = body.get("disabled_reason")
        done = (await c.call("services", "set", req))["service"]
        out = {"host": done["host"], "binary": done["binary"], "status": done["status"]}
        if target == "disable-log-reason":
            out["disabled_reason"] = done["disabled_reason"]
        return c.reply({"service": out})
    host = await _compute_host(c, target)
    status = body.get("status")
    if status not in ("enabled", "disabled"):
        raise RestError(400, "status: enabled or disabled")
    req = {"host": host, "status": status}
    if body.get("disabled_reason") is not None:
        req["disabled_reason"] = body["disabled_reason"]
    await c.call("services", "set", req)
    rows = (await c.call("services", "list", {}))["services"]
    row = next(s for s in rows if s["binary"] == "hvmesh-compute" and s["host"] == host)
    return c.reply({"service": service_view(c, row)})


async def _compute_host(c: Compute, service_id: str) -> str:
    """The host of the compute service whose (2.53) UUID is `service_id`; 404 otherwise."""
    rows = (await c.call("services", "list", {}))["services"]
    for s in rows:
        if s["binary"] == "hvmesh-compute" and public_id(c, "service", s["id"]) == service_id:
            return str(s["host"])
    if any(public_id(c, "service", s["id"]) == service_id for s in rows):
        raise RestError(400, "only compute services (hvmesh-compute) change status")
    raise RestError(404, f"Service {service_id} not found.")


async def service_delete(request: web.Request) -> web.Response:
    Compute(request)
    raise RestError(501, "os-services delete: a host record goes when its agent is removed")


def zone_state(z: dict[str, Any]) -> dict[str, bool]:
    return {"available": z["zone_status"] == "available"}


async def zones(request: web.Request) -> web.Response:
    """GET /os-availability-zone: every zone and whether it can take servers."""
    c = Compute(request)
    reply = await c.call("availability_zones", "list", {})
    info = [
        {"zoneName": z["zone_name"], "zoneState": zone_state(z), "hosts": None}
        for z in reply["availability_zones"]
    ]
    return c.reply({"availabilityZoneInfo": info})


async def zones_detail(request: web.Request) -> web.Response:
    """GET /os-availability-zone/detail (admin): each zone's hosts and their services."""
    c = Compute(request)
    listed = await c.call("services", "list", {})
    reply = await c.call("availability_zones", "list", {})
    hosts: dict[str, dict[str, dict[str, Any]]] = {}
    for s in listed["services"]:
        if not s["host"]:
            continue
        by_host = hosts.setdefault(s["zone"], {}).setdefault(s["host"], {})
        by_host[s["binary"]] = {
            "available": s["state"] == "up" and s["status"] == "enabled",
            "active": s["status"] == "enabled",
            "updated_at": when(s.get("updated_at")),
        }
    info = [
        {
            "zoneName": z["zone_name"],
            "zoneState": zone_state(z),
            "hosts": hosts.pop(z["zone_name"], None),
        }
        for z in reply["availability_zones"]
    ]
    info += [
        {"zoneName": name, "zoneState": {"available": True}, "hosts": rows}
        for name, rows in sorted(hosts.items())
    ]
    return c.reply({"availabilityZoneInfo": info})


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get(f"{PREFIX}/os-services", services),
        web.put(PREFIX + "/os-services/{action}", service_update),
        web.delete(PREFIX + "/os-services/{id}", service_delete),
        web.get(f"{PREFIX}/os-availability-zone", zones),
        web.get(f"{PREFIX}/os-availability-zone/detail", zones_detail),
    ]
