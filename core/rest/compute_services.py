"""Compute os-services and os-availability-zone, on hvmesh.api.services and .availability_zones."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import PREFIX, Compute
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import iso
from hvmesh.core.rest.legacy_ids import number


def when(t: float | None) -> str | None:
    return None if t is None else iso(t)


def service_view(c: Compute, s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": number("service", s["id"]),
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
    """GET /os-services, with Nova's `host` and `binary` filters."""
    c = Compute(request)
    reply = await c.call("services", "list", {})
    rows = [
        s
        for s in reply["services"]
        if all(request.query.get(k) in (None, s[k]) for k in ("host", "binary"))
    ]
    return c.reply({"services": [service_view(c, s) for s in rows]})


async def service_update(request: web.Request) -> web.Response:
    """PUT /os-services/{action} (enable, disable, force-down): not on hvmesh's NATS API."""
    Compute(request)
    raise RestError(
        501,
        f"os-services {request.match_info['action']}: hvmesh's API cannot change a "
        "service's status; hosts are enabled and disabled by their agents' configuration",
    )


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
