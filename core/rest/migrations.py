"""Compute os-migrations and a server's migrations, on hvmesh.api.migrations.list."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hvmesh.core.rest.calls import PREFIX, Compute
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.legacy_ids import number, only_query
from hvmesh.core.rest.server_extras import moment, when

# Nova's query parameter -> migrations.list's field.
FILTERS = {
    "host": "host",
    "status": "status",
    "instance_uuid": "server_id",
    "migration_type": "kind",
    "project_id": "project",
}
KINDS = ("resize", "migration", "live-migration", "evacuation")
IN_PROGRESS = ("pre-migrating", "migrating", "preparing", "running", "post-migrating", "queued")


def migration_view(c: Compute, m: dict[str, Any]) -> dict[str, Any]:
    """A move as Nova shows one: hosts as compute names (hvmesh hosts have no node and
    no address apart: the node is the host, the address null)."""
    out: dict[str, Any] = {
        "id": number("migration", m["id"]),
        "instance_uuid": m["server_id"],
        "source_compute": m["source_host"],
        "source_node": m["source_host"],
        "dest_compute": m["dest_host"],
        "dest_node": m["dest_host"],
        "dest_host": None,
        "old_instance_type_id": number("flavor", m["old_flavor_id"] or ""),
        "new_instance_type_id": number("flavor", m["new_flavor_id"] or ""),
        "status": m["status"],
        "created_at": when(m["created_at"]),
        "updated_at": when(m["updated_at"]),
    }
    if c.at_least(2, 23):
        out["migration_type"] = m["kind"]
        if m["kind"] == "live-migration" and m["status"] in IN_PROGRESS:
            href = f"servers/{m['server_id']}/migrations/{out['id']}"
            out["links"] = [
                {"rel": "self", "href": f"{c.base}{PREFIX}/{href}"},
                {"rel": "bookmark", "href": f"{c.base}/compute/{href}"},
            ]
    if c.at_least(2, 59):
        out["uuid"] = m["id"]
    if c.at_least(2, 80):
        out["user_id"] = m["user"]
        out["project_id"] = m["project"]
    return out


def list_request(c: Compute) -> dict[str, Any]:
    """migrations.list's body from Nova's GET /os-migrations query, version by version."""
    allowed = {"hidden", "host", "status", "instance_uuid", "source_compute", "migration_type"}
    if c.at_least(2, 59):
        allowed |= {"limit", "marker", "changes-since"}
    if c.at_least(2, 66):
        allowed.add("changes-before")
    if c.at_least(2, 80):
        allowed |= {"user_id", "project_id"}
    if c.at_least(2, 75):
        only_query(c, allowed)
    q = c.request.query
    body: dict[str, Any] = {ours: q[nova] for nova, ours in FILTERS.items() if q.get(nova)}
    if q.get("source_compute"):
        body["host"] = q["source_compute"]
    if "kind" in body and body["kind"] not in KINDS:
        raise RestError(400, f"migration_type: one of {', '.join(KINDS)}")
    if c.at_least(2, 59):
        limit = c.int_query("limit")
        if limit is not None:
            body["limit"] = limit
        if q.get("marker"):
            body["marker"] = q["marker"]
        since = moment(c, "changes-since")
        if since is not None:
            body["changes_since"] = since
    return body


async def index(request: web.Request) -> web.Response:
    """GET /os-migrations (admin): every move, newest first."""
    c = Compute(request)
    body = list_request(c)
    reply = await c.call("migrations", "list", body)
    rows = reply["migrations"]
    user = request.query.get("user_id") if c.at_least(2, 80) else None
    before = moment(c, "changes-before") if c.at_least(2, 66) else None
    rows = [
        m
        for m in rows
        if (user is None or m["user"] == user) and (before is None or m["updated_at"] <= before)
    ]
    out: dict[str, Any] = {"migrations": [migration_view(c, m) for m in rows]}
    more = reply.get("migrations_links") or []
    if more and c.at_least(2, 59):
        query = {k: v for k, v in request.query.items() if k != "marker"}
        query["marker"] = more[0]["marker"]
        out["migrations_links"] = [
            {"rel": "next", "href": f"{c.base}{PREFIX}/os-migrations?{urlencode(query)}"}
        ]
    return c.reply(out)


async def server_index(request: web.Request) -> web.Response:
    """GET /servers/{id}/migrations (2.23): the server's live migration under way."""
    c = Compute(request)
    if not c.at_least(2, 23):
        raise RestError(404, "server migrations: from microversion 2.23")
    server = (await c.call("servers", "get", {"id": request.match_info["id"]}))["server"]
    body = {"server_id": server["id"], "kind": "live-migration"}
    rows = (await c.call("migrations", "list", body))["migrations"]
    live = [migration_view(c, m) for m in rows if m["status"] in IN_PROGRESS]
    return c.reply({"migrations": live})


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get(f"{PREFIX}/os-migrations", index),
        web.get(PREFIX + "/servers/{id}/migrations", server_index),
    ]
