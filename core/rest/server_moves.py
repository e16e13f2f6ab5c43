"""Compute server actions with their own reply: rebuild, evacuate and createImage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hvmesh.core.rest import server_views
from hvmesh.core.rest.calls import Compute, ref_id
from hvmesh.core.rest.errors import RestError

REBUILD_KEYS = {
    "imageRef",
    "name",
    "metadata",
    "adminPass",
    "OS-DCF:diskConfig",
    "preserve_ephemeral",
}


# Rebuild fields hvmesh's rebuild cannot honour, refused when given a value (Nova's "none":
# null or empty), with the microversion Nova takes them from.
REBUILD_REFUSED = {
    "personality": "hvmesh injects no files",
    "preserve_ephemeral": "hvmesh flavors have no ephemeral disk",
    "description": "hvmesh servers have no description (2.19)",
    "key_name": "hvmesh's rebuild keeps the server's key pair (2.54)",
    "user_data": "hvmesh's rebuild keeps the server's user data (2.57)",
    "trusted_image_certificates": "hvmesh does not verify image signatures (2.63)",
    "hostname": "the hostname is the server's name as one DNS label (2.90)",
    "accessIPv4": "hvmesh servers have no access addresses",
    "accessIPv6": "hvmesh servers have no access addresses",
}


async def rebuild(c: Compute, ident: str, args: dict[str, Any]) -> web.Response:
    """Nova's rebuild: the server's disk made again from `imageRef` (its name and metadata
    may change with it); 202 with the server."""
    for key, why in REBUILD_REFUSED.items():
        if args.get(key) not in (None, "", [], {}, False):
            raise RestError(400, f"rebuild.{key}: {why}")
    unknown = set(args) - REBUILD_KEYS - set(REBUILD_REFUSED)
    if unknown:
        raise RestError(400, f"rebuild: {', '.join(sorted(unknown))} not supported")
    image = ref_id(args.get("imageRef"), "rebuild.imageRef")
    changes: dict[str, Any] = {}
    if args.get("name") is not None:
        changes["name"] = args["name"]
    if args.get("metadata") is not None:
        if not isinstance(args["metadata"], dict):
            raise RestError(400, "rebuild.metadata: an object of strings")
        changes.update(metadata=args["metadata"], replace_metadata=True)
    if changes:
        await c.call("servers", "update", {"id": ident, **changes})
    reply = await c.call("servers", "action", {"id": ident, "action": "rebuild", "image": image})
    return c.reply({"server": await server_views.shown(c, reply["server"])}, status=202)


async def evacuate(c: Compute, ident: str, args: dict[str, Any]) -> web.Response:
    """Nova's evacuate (admin): the server of a down host rebuilt elsewhere; `host`, or
    the scheduler's pick; from 2.95 it ends stopped. 200, no body (hvmesh sets no admin
    passwords)."""
    if args.get("onSharedStorage") and c.at_least(2, 14):
        raise RestError(400, "evacuate.onSharedStorage: removed in microversion 2.14")
    if "force" in args and c.at_least(2, 68):
        raise RestError(400, "evacuate.force: removed in microversion 2.68")
    body: dict[str, Any] = {"id": ident, "action": "evacuate"}
    if c.at_least(2, 95):
        body["stop"] = True
    if args.get("host"):
        body["host"] = args["host"]
    await c.call("servers", "action", body)
    return c.reply(None, status=200)


async def create_image(c: Compute, ident: str, args: dict[str, Any]) -> web.Response:
    """Nova's createImage: a snapshot as a new image; 202 with the image's URL in
    Location (the image API's, where clients look it up), from 2.45 `{"image_id"}` instead."""
    if not isinstance(args.get("name"), str):
        raise RestError(400, "createImage.name is required")
    body: dict[str, Any] = {"id": ident, "action": "create-image", "name": args["name"]}
    if args.get("metadata") is not None:
        body["metadata"] = args["metadata"]
    reply = await c.call("servers", "action", body)
    if c.at_least(2, 45):
        return c.reply({"image_id": reply["image_id"]}, status=202)
    location = f"{c.base}/image/v2/images/{reply['image_id']}"
    return c.reply(None, status=202, headers={"Location": location})


ACTIONS: dict[str, Callable[[Compute, str, dict[str, Any]], Awaitable[web.Response]]] = {
    "rebuild": rebuild,
    "evacuate": evacuate,
    "createImage": create_image,
}
