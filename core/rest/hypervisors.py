"""Compute os-hypervisors: list, detail, show, search, statistics, on hvmesh.api.hypervisors.*."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import PREFIX, Compute
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.legacy_ids import every, number, resolve

GETS_AT_ONCE = 8  # hypervisors.get requests a detail page makes at a time


def name_of(row: dict[str, Any]) -> str:
    return str(row["name"])


def version_number(text: str) -> int:
    """Nova's integer hypervisor version: "9.0.1" is 9000001 (0 when it is no version)."""
    parts = (text or "").split(".")[:3]
    if not all(p.isdigit() for p in parts):
        return 0
    total = 0
    for part in parts + ["0"] * (3 - len(parts)):
        total = total * 1000 + int(part)
    return total


def basic(h: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": number("hypervisor", h["name"]),
        "hypervisor_hostname": h["name"],
        "state": h["state"],
        "status": h["status"],
    }


def detailed(c: Compute, h: dict[str, Any]) -> dict[str, Any]:
    """A hypervisors.get reply as Nova's detail view (2.1 to 2.52 shape)."""
    cpu: dict[str, Any] = {"arch": h.get("cpu_arch") or "", "features": []}
    out = basic(h)
    out.update(
        {
            "cpu_info": cpu if c.at_least(2, 28) else json.dumps(cpu),
            "current_workload": 0,
            "disk_available_least": h["local_gb"] - h["local_gb_used"],
            "free_disk_gb": h["local_gb"] - h["local_gb_used"],
            "free_ram_mb": h["memory_mb"] - h["memory_mb_used"],
            "host_ip": None,
            "hypervisor_type": h["hypervisor_type"],
            "hypervisor_version": version_number(h.get("hypervisor_version", "")),
            "local_gb": h["local_gb"],
            "local_gb_used": h["local_gb_used"],
            "memory_mb": h["memory_mb"],
            "memory_mb_used": h["memory_mb_used"],
            "running_vms": h["running_vms"],
            "service": {
                "host": h["name"],
                "id": number("service", h["name"]),
                "disabled_reason": h.get("disabled_reason"),
            },
            "vcpus": h["vcpus"],
            "vcpus_used": h["vcpus_used"],
        }
    )
    return out


async def get(c: Compute, name: str) -> dict[str, Any]:
    reply = await c.call("hypervisors", "get", {"name": name})
    return dict(reply["hypervisor"])


async def _list(request: web.Request, detail: bool) -> web.Response:
    c = Compute(request)
    body: dict[str, Any] = {}
    if c.at_least(2, 33):
        limit = c.int_query("limit")
        if limit is not None:
            body["limit"] = limit
        marker = request.query.get("marker")
        if marker is not None:
            body["marker"] = await resolve(c, marker, "hypervisor", "hypervisors", name_of)
    pattern = request.query.get("hypervisor_hostname_pattern")
    if pattern:
        body["hypervisor_hostname_pattern"] = pattern
    reply = await c.call("hypervisors", "list", body)
    rows = reply["hypervisors"]
    if detail:
        limit_gets = asyncio.Semaphore(GETS_AT_ONCE)

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            async with limit_gets:
                return detailed(c, await get(c, row["name"]))

        views = list(await asyncio.gather(*(one(r) for r in rows)))
    else:
        views = [basic(r) for r in rows]
    out: dict[str, Any] = {"hypervisors": views}
    more = reply.get("hypervisors_links") or []
    if more and c.at_least(2, 33):
        # Nova's marker before 2.53 is the last hypervisor's integer id
        numbered = {"hypervisors_links": [{"marker": number("hypervisor", more[0]["marker"])}]}
        path = "os-hypervisors/detail" if detail else "os-hypervisors"
        out["hypervisors_links"] = c.next_link(numbered, "hypervisors", path)
    return c.reply(out)


async def index(request: web.Request) -> web.Response:
    return await _list(request, detail=False)


async def detail(request: web.Request) -> web.Response:
    return await _list(request, detail=True)


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    name = await resolve(c, request.match_info["id"], "hypervisor", "hypervisors", name_of)
    return c.reply({"hypervisor": detailed(c, await get(c, name))})


async def search(request: web.Request) -> web.Response:
    """GET /os-hypervisors/{pattern}/search: hypervisors whose name contains the pattern."""
    c = Compute(request)
    pattern = request.match_info["pattern"]
    rows = await every(c, "hypervisors", {"hypervisor_hostname_pattern": pattern})
    if not rows:
        raise RestError(404, f"No hypervisor matching '{pattern}' could be found.")
    return c.reply({"hypervisors": [basic(r) for r in rows]})


async def uptime(request: web.Request) -> web.Response:
    c = Compute(request)
    await resolve(c, request.match_info["id"], "hypervisor", "hypervisors", name_of)
    raise RestError(501, "Virt driver does not implement uptime function.")


async def statistics(request: web.Request) -> web.Response:
    c = Compute(request)
    rows = await every(c, "hypervisors")
    totals = {k: sum(r[k] for r in rows) for k in ("vcpus", "memory_mb", "local_gb")}
    used = {f"{k}_used": sum(r[f"{k}_used"] for r in rows) for k in totals}
    free_disk = totals["local_gb"] - used["local_gb_used"]
    stats = {
        "count": len(rows),
        "current_workload": 0,
        "disk_available_least": free_disk,
        "free_disk_gb": free_disk,
        "free_ram_mb": totals["memory_mb"] - used["memory_mb_used"],
        "running_vms": sum(r["running_vms"] for r in rows),
        **totals,
        **used,
    }
    return c.reply({"hypervisor_statistics": stats})


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/os-hypervisors"
    return [
        web.get(p, index),
        web.get(f"{p}/detail", detail),
        web.get(f"{p}/statistics", statistics),
        web.get(p + "/{pattern}/search", search),
        web.get(p + "/{id}/uptime", uptime),
        web.get(p + "/{id}", show),
    ]
