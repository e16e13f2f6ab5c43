"""Compute servers: list, detail, show, create, delete and actions, on hvmesh.api.servers.*."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest import consoles, server_moves, server_queries, server_views
from hvmesh.core.rest.calls import Compute, json_body, ref_id
from hvmesh.core.rest.errors import RestError

# Nova's action -> (hvmesh action, {Nova's body key: hvmesh's}); all answer 202 with no body.
ACTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "os-start": ("start", {}),
    "os-stop": ("stop", {}),
    "reboot": ("reboot", {"type": "type"}),
    "pause": ("pause", {}),
    "unpause": ("unpause", {}),
    "suspend": ("suspend", {}),
    "resume": ("resume", {}),
    "lock": ("lock", {"locked_reason": "reason"}),
    "unlock": ("unlock", {}),
    "os-resetState": ("reset-state", {"state": "state"}),
    "resize": ("resize", {"flavorRef": "flavor"}),
    "confirmResize": ("confirm-resize", {}),
    "revertResize": ("revert-resize", {}),
    "migrate": ("migrate", {"host": "host"}),
    "os-migrateLive": ("live-migrate", {"host": "host"}),
    "shelve": ("shelve", {}),
    "shelveOffload": ("shelve-offload", {}),
    "unshelve": ("unshelve", {}),
}
# (action, argument) -> the microversion Nova takes it from (ignored before, as Nova's
# null bodies of those versions).
ARG_SINCE = {("lock", "locked_reason"): (2, 73), ("migrate", "host"): (2, 56)}
# (action, argument) -> (the microversion it is refused from, why): what hvmesh cannot
# do, and what Nova no longer takes.
REFUSED = {
    ("unshelve", "availability_zone"): (
        (2, 77),
        "hvmesh unshelves a server in its own availability zone",
    ),
    ("unshelve", "host"): ((2, 91), "hvmesh's unshelve takes no host"),
    ("os-migrateLive", "force"): ((2, 68), "removed in microversion 2.68"),
}


async def _list(request: web.Request, detailed: bool) -> web.Response:
    c = Compute(request)
    reply = await c.call("servers", "list", server_queries.list_request(c))
    show = server_views.detail if detailed else server_views.brief
    out: dict[str, Any] = {"servers": [show(c, s) for s in reply["servers"]]}
    more = c.next_link(reply, "servers", "servers/detail" if detailed else "servers")
    if more:
        out["servers_links"] = more
    return c.reply(out)


async def index(request: web.Request) -> web.Response:
    return await _list(request, detailed=False)


async def detail(request: web.Request) -> web.Response:
    return await _list(request, detailed=True)


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    reply = await c.call("servers", "get", {"id": request.match_info["id"]})
    return c.reply({"server": await server_views.shown(c, reply["server"])})


def _interfaces(c: Compute, networks: Any) -> tuple[list[str], list[str]]:
    """(networks, ports) from Nova's "networks": a list of {uuid} or {port}, or "auto"/"none"."""
    if networks is None:
        if c.at_least(2, 37):
            raise RestError(400, "server.networks is required from microversion 2.37")
        return [], []
    if networks in ("auto", "none"):
        if not c.at_least(2, 37):
            raise RestError(400, f"server.networks {networks!r}: from microversion 2.37")
        return [], []
    if not isinstance(networks, list):
        raise RestError(400, "server.networks: a list, or 'auto' or 'none'")
    nets: list[str] = []
    ports: list[str] = []
    for i, entry in enumerate(networks):
        if not isinstance(entry, dict):
            raise RestError(400, f"server.networks[{i}]: an object with uuid or port")
        if set(entry) - {"uuid", "port"}:
            unknown = ", ".join(sorted(set(entry) - {"uuid", "port"}))
            raise RestError(400, f"server.networks[{i}]: {unknown} not supported")
        if entry.get("port"):
            ports.append(str(entry["port"]))
        elif entry.get("uuid"):
            nets.append(str(entry["uuid"]))
        else:
            raise RestError(400, f"server.networks[{i}]: needs uuid or port")
    return nets, ports


def _boot_image(image_ref: Any, mappings: Any) -> str:
    """The image a server boots from: imageRef, or the one block device mapping clients
    send for an image boot (source image, destination local, boot_index 0); hvmesh boots
    from images only, so any other mapping is a 400."""
    image = ref_id(image_ref, "server.imageRef") if image_ref else None
    if mappings:
        if (
            not isinstance(mappings, list)
            or len(mappings) != 1
            or not isinstance(mappings[0], dict)
        ):
            raise RestError(400, "block_device_mapping_v2: hvmesh boots from one image only")
        bdm = mappings[0]
        local = (
            bdm.get("source_type") == "image" and bdm.get("destination_type", "local") == "local"
        )
        if not local or str(bdm.get("boot_index", 0)) != "0" or not bdm.get("uuid"):
            raise RestError(
                400, "block_device_mapping_v2: only an image to a local disk (boot_index 0)"
            )
        for key in ("tag", "volume_type"):
            if bdm.get(key) is not None:
                raise RestError(
                    400,
                    f"block_device_mapping_v2.{key}: not supported (no device tags, no volumes)",
                )
        if image is not None and bdm["uuid"] != image:
            raise RestError(400, "block_device_mapping_v2: its image is not imageRef")
        image = str(bdm["uuid"])
    if image is None:
        raise RestError(400, "server.imageRef is required: hvmesh boots from images")
    return image


# Fields of Nova's POST /servers that hvmesh cannot honour: a 400 naming the field when
# given a value (Nova's "none": null, "" or empty).
CREATE_REFUSED = {
    "personality": "hvmesh injects no files (removed in microversion 2.57)",
    "description": "hvmesh servers have no description",
    "tags": "hvmesh servers have no tags",
    "trusted_image_certificates": "hvmesh does not verify image signatures",
    "host": "hvmesh's servers.create takes no host (use availability_zone)",
    "hypervisor_hostname": "hvmesh's servers.create takes no host (use availability_zone)",
    "hostname": "the hostname is the server's name as one DNS label",
}


def create_request(c: Compute, body: dict[str, Any], hints: Any) -> dict[str, Any]:
    """hvmesh.api.servers.create's body from Nova's POST /servers body."""
    for key, why in CREATE_REFUSED.items():
        if body.get(key) not in (None, "", [], {}):
            raise RestError(400, f"server.{key}: {why}")
    if body.get("block_device_mapping"):
        raise RestError(400, "block_device_mapping: hvmesh boots from images only")
    image = _boot_image(body.get("imageRef"), body.get("block_device_mapping_v2"))
    nets, ports = _interfaces(c, body.get("networks"))
    req: dict[str, Any] = {
        "name": body.get("name"),
        "flavor": ref_id(body.get("flavorRef"), "server.flavorRef"),
        "image": image,
        "networks": nets,
        "ports": ports,
        "metadata": body.get("metadata") or {},
        "config_drive": str(body.get("config_drive", "")).lower() in ("true", "1", "yes"),
    }
    for nova, ours in (
        ("key_name", "key_name"),
        ("user_data", "user_data"),
        ("availability_zone", "availability_zone"),
        ("min_count", "min_count"),
        ("max_count", "max_count"),
    ):
        if body.get(nova) is not None:
            req[ours] = body[nova]
    if hints:
        req["scheduler_hints"] = hints
    return req


async def create(request: web.Request) -> web.Response:
    c = Compute(request)
    body = await json_body(request, "server")
    raw = await request.json()
    hints = raw.get("os:scheduler_hints") or raw.get("OS-SCH-HNT:scheduler_hints")
    reply = await c.call("servers", "create", create_request(c, body, hints))
    created = reply.get("server") or (reply.get("servers") or [{}])[0]
    server = {
        "id": created["id"],
        "links": c.links("servers", created["id"]),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": "default"}],
    }
    location = server["links"][0]["href"]
    return c.reply({"server": server}, status=202, headers={"Location": location})


async def update(request: web.Request) -> web.Response:
    """Nova's PUT /servers/{id}: a new name (hvmesh servers have no description)."""
    c = Compute(request)
    body = await json_body(request, "server")
    unknown = set(body) - {"name"}
    if unknown:
        raise RestError(400, f"server: {', '.join(sorted(unknown))} cannot be updated here")
    if "name" not in body:
        raise RestError(400, "server.name: the only field a server update takes")
    reply = await c.call(
        "servers", "update", {"id": request.match_info["id"], "name": body["name"]}
    )
    return c.reply({"server": await server_views.shown(c, reply["server"])})


async def delete(request: web.Request) -> web.Response:
    c = Compute(request)
    await c.call("servers", "delete", {"id": request.match_info["id"]})
    return c.reply(None, status=204)


async def action(request: web.Request) -> web.Response:
    c = Compute(request)
    try:
        raw = await request.json()
    except ValueError:
        raise RestError(400, "malformed JSON in the request body") from None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise RestError(400, "an action body is one object: {<action>: {...}}")
    ((name, args),) = raw.items()
    args = args if isinstance(args, dict) else {}
    ident = request.match_info["id"]
    if name == "os-getConsoleOutput":
        body: dict[str, Any] = {"id": ident, "action": "console-log"}
        if args.get("length") not in (None, -1, "-1"):
            body["length"] = int(args["length"])
        reply = await c.call("servers", "action", body)
        return c.reply({"output": reply.get("output", "")})
    if name in consoles.ACTIONS:
        return await consoles.legacy_action(c, ident, name, args)
    if name in server_moves.ACTIONS:
        return await server_moves.ACTIONS[name](c, ident, args)
    if name not in ACTIONS:
        raise RestError(400, f"action {name!r} is not implemented (docs/rest-api.md)")
    ours, keys = ACTIONS[name]
    body = {"id": ident, "action": ours}
    for arg in args:
        refused = REFUSED.get((name, arg))
        if refused is not None and c.version >= refused[0]:
            raise RestError(400, f"{name}.{arg}: {refused[1]}")
    for nova, key in keys.items():
        if c.version < ARG_SINCE.get((name, nova), (2, 1)):
            continue
        if args.get(nova) is not None:
            body[key] = ref_id(args[nova], nova) if nova == "flavorRef" else args[nova]
    await c.call("servers", "action", body)
    return c.reply(None, status=202)


def routes() -> list[web.AbstractRouteDef]:
    p = "/compute/v2.1/servers"
    return [
        web.get(p, index),
        web.get(f"{p}/detail", detail),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.put(p + "/{id}", update),
        web.delete(p + "/{id}", delete),
        web.post(p + "/{id}/action", action),
    ]
