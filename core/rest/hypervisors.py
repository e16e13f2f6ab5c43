"""Compute os-hypervisors: list, detail, show, search, servers, statistics; hvmesh.api.hypervisors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from hvmesh.core.protocol import errors
from hvmesh.core.rest.calls import PREFIX, Compute
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.legacy_ids import every, is_uuid, only_query, public_id, resolve

GETS_AT_ONCE = 8  # hypervisors.get requests a page makes at a time
# Nova's boolean query values (its `boolean` parameter type), lower-cased.
TRUE = ("true", "1", "on", "yes")
FALSE = ("false", "0", "off", "no")
LIST_QUERY = ("limit", "marker", "hypervisor_hostname_pattern", "with_servers")


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


def basic(c: Compute, h: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": public_id(c, "hypervisor", h["name"]),
        "hypervisor_hostname": h["name"],
        "state": h["state"],
        "status": h["status"],
    }


def detailed(c: Compute, h: dict[str, Any]) -> dict[str, Any]:
    """A hypervisors.get reply as Nova's detail view at the request's version."""
    out = basic(c, h)
    out.update(
        {
            "host_ip": None,
            "hypervisor_type": h["hypervisor_type"],
            "hypervisor_version": version_number(h.get("hypervisor_version", "")),
            "service": {
                "host": h["name"],
                "id": public_id(c, "service", h["name"]),
                "disabled_reason": h.get("disabled_reason"),
            },
        }
    )
    if c.at_least(2, 88):
        out["uptime"] = None  # hvmesh agents do not report the host's uptime
        return out
    cpu: dict[str, Any] = {"arch": h.get("cpu_arch") or "", "features": []}
    out.update(
        {
            "cpu_info": cpu if c.at_least(2, 28) else json.dumps(cpu),
            "current_workload": 0,
            "disk_available_least": h["local_gb"] - h["local_gb_used"],
            "free_disk_gb": h["local_gb"] - h["local_gb_used"],
            "free_ram_mb": h["memory_mb"] - h["memory_mb_used"],
            "local_gb": h["local_gb"],
            "local_gb_used": h["local_gb_used"],
            "memory_mb": h["memory_mb"],
            "memory_mb_used": h["memory_mb_used"],
            "running_vms": h["running_vms"],
            "vcpus": h["vcpus"],
            "vcpus_used": h["vcpus_used"],
        }
    )
    return out


def with_servers(c: Compute, out: dict[str, Any], h: dict[str, Any], asked: bool) -> None:
    """Nova's `servers` of a hypervisor: when there are some, and from 2.75 whenever asked."""
    ids = list(h.get("servers") or [])
    if ids:
        # Nova's `name` is the instance name, which hvmesh's server view gives as the id
        out["servers"] = [{"name": s, "uuid": s} for s in ids]
    elif asked and c.at_least(2, 75):
        out["servers"] = []


def flag(c: Compute, name: str) -> bool:
    raw = c.request.query.get(name)
    if raw is None:
        return False
    if raw.strip().lower() in TRUE:
        return True
    if raw.strip().lower() in FALSE:
        return False
    raise RestError(400, f"{name}: {raw!r} is not a boolean")


async def get(c: Compute, name: str) -> dict[str, Any]:
    reply = await c.call("hypervisors", "get", {"name": name})
    return dict(reply["hypervisor"])


async def views(
    c: Compute, rows: list[dict[str, Any]], detail: bool, servers: bool
) -> list[dict[str, Any]]:
    """The rows of a listing as Nova shows them, with one hypervisors.get each when needed."""
    if not detail and not servers:
        return [basic(c, r) for r in rows]
    limit_gets = asyncio.Semaphore(GETS_AT_ONCE)

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        async with limit_gets:
            h = await get(c, row["name"])
        out = detailed(c, h) if detail else basic(c, h)
        if servers:
            with_servers(c, out, h, True)
        return out

    return list(await asyncio.gather(*(one(r) for r in rows)))


async def _list(request: web.Request, detail: bool) -> web.Response:
    c = Compute(request)
    body: dict[str, Any] = {}
    pattern = None
    servers = False
    if c.at_least(2, 53):
        only_query(c, LIST_QUERY)
        pattern = request.query.get("hypervisor_hostname_pattern")
        servers = flag(c, "with_servers")
        if pattern is not None and ("limit" in request.query or "marker" in request.query):
            raise RestError(
                400,
                "Paging over hypervisors with the hypervisor_hostname_pattern query "
                "parameter is not supported.",
            )
    if pattern is not None:
        rows = await every(c, "hypervisors", {"hypervisor_hostname_pattern": pattern})
        if not rows:
            raise RestError(404, f"No hypervisor matching '{pattern}' could be found.")
        return c.reply({"hypervisors": await views(c, rows, detail, servers)})
    if c.at_least(2, 33):
        limit = c.int_query("limit")
        if limit is not None:
            body["limit"] = limit
        marker = request.query.get("marker")
        if marker is not None:
            body["marker"] = await resolve(
                c, marker, "hypervisor", "hypervisors", name_of, uuids=c.at_least(2, 53)
            )
    reply = await c.call("hypervisors", "list", body)
    out: dict[str, Any] = {"hypervisors": await views(c, reply["hypervisors"], detail, servers)}
    more = reply.get("hypervisors_links") or []
    if more and c.at_least(2, 33):
        # Nova's marker is the last hypervisor's id: an integer before 2.53, a UUID from it
        marker_id = public_id(c, "hypervisor", more[0]["marker"])
        path = "os-hypervisors/detail" if detail else "os-hypervisors"
        out["hypervisors_links"] = c.next_link(
            {"hypervisors_links": [{"marker": marker_id}]}, "hypervisors", path
        )
    return c.reply(out)


async def index(request: web.Request) -> web.Response:
    return await _list(request, detail=False)


async def detail(request: web.Request) -> web.Response:
    return await _list(request, detail=True)


async def named(c: Compute, ref: str) -> dict[str, Any]:
    """The hypervisor a path names: Nova's id (an integer before 2.53, a UUID from it) or,
    as hvmesh also takes, the host name; 400 from 2.53 for anything else, as Nova's."""
    name = await resolve(c, ref, "hypervisor", "hypervisors", name_of, uuids=c.at_least(2, 53))
    try:
        return await get(c, name)
    except errors.NotFound:
        if c.at_least(2, 53) and not is_uuid(ref):
            raise RestError(400, f"Invalid uuid {ref}") from None
        raise RestError(404, f"Hypervisor with ID '{ref}' could not be found.") from None


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    servers = False
    if c.at_least(2, 53):
        only_query(c, ("with_servers",))
        servers = flag(c, "with_servers")
    h = await named(c, request.match_info["id"])
    out = detailed(c, h)
    if servers:
        with_servers(c, out, h, True)
    return c.reply({"hypervisor": out})


def before_253(c: Compute, what: str) -> None:
    if c.at_least(2, 53):
        raise RestError(
            404, f"{what}: replaced in microversion 2.53 by GET /os-hypervisors query parameters"
        )


async def search(request: web.Request) -> web.Response:
    """GET /os-hypervisors/{pattern}/search (before 2.53): hosts whose name contains it."""
    c = Compute(request)
    before_253(c, "GET /os-hypervisors/{pattern}/search")
    pattern = request.match_info["pattern"]
    rows = await every(c, "hypervisors", {"hypervisor_hostname_pattern": pattern})
    if not rows:
        raise RestError(404, f"No hypervisor matching '{pattern}' could be found.")
    return c.reply({"hypervisors": [basic(c, r) for r in rows]})


async def servers_of(request: web.Request) -> web.Response:
    """GET /os-hypervisors/{pattern}/servers (before 2.53): matching hosts and their servers."""
    c = Compute(request)
    before_253(c, "GET /os-hypervisors/{pattern}/servers")
    pattern = request.match_info["pattern"]
    rows = await every(c, "hypervisors", {"hypervisor_hostname_pattern": pattern})
    if not rows:
        raise RestError(404, f"No hypervisor matching '{pattern}' could be found.")
    found = []
    for row in rows:
        h = await get(c, row["name"])
        out = basic(c, h)
        with_servers(c, out, h, False)
        found.append(out)
    return c.reply({"hypervisors": found})


def before_288(c: Compute, what: str) -> None:
    if c.at_least(2, 88):
        raise RestError(404, f"{what}: removed in microversion 2.88")


async def uptime(request: web.Request) -> web.Response:
    c = Compute(request)
    before_288(c, "GET /os-hypervisors/{id}/uptime")
    await named(c, request.match_info["id"])
    raise RestError(501, "Virt driver does not implement uptime function.")


async def statistics(request: web.Request) -> web.Response:
    c = Compute(request)
    before_288(c, "GET /os-hypervisors/statistics")
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
        web.get(p + "/{pattern}/servers", servers_of),
        web.get(p + "/{id}/uptime", uptime),
        web.get(p + "/{id}", show),
    ]
