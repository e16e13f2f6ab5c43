"""Image v2 records: list, show, create, update and delete, on hvmesh.api.images.*."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.rest import image_files
from hvmesh.core.rest.calls import json_object
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.image_views import (
    PREFIX,
    READ_ONLY,
    Glance,
    property_value,
    versions,
    view,
    whole,
)

LOG = log.get_logger(__name__)

VISIBILITIES = ("public", "private", "shared", "community", "all")
MEMBER_STATUSES = ("accepted", "pending", "rejected", "all")
MAX_IDS = 100  # ids one `id=in:...` filter may name
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def _sort_is_by_name(query: Any) -> None:
    """hvmesh lists images by name, then id; a request for another order is a 400."""
    keys = [k.strip() for k in query.getall("sort_key", []) if k.strip()]
    dirs = [d.strip().lower() for d in query.getall("sort_dir", []) if d.strip()]
    for part in ",".join(query.getall("sort", [])).split(","):
        if part.strip():
            key, _, direction = part.strip().partition(":")
            keys.append(key)
            dirs.append(direction.lower() or "asc")
    if any(k not in ("name", "id") for k in keys[:1]) or any(d != "asc" for d in dirs):
        raise RestError(400, "sort: hvmesh lists images by name, then id, ascending only")


def _keep(c: Glance, image: dict[str, Any]) -> bool:
    """Whether an image passes the filters hvmesh.api.images.list does not apply itself."""
    q = c.request.query
    visibility = q.get("visibility")
    if visibility not in (None, "all") and image.get("visibility") != visibility:
        return False
    if "owner" in q and image.get("project") != q["owner"]:
        return False
    if q.get("member_status") in ("pending", "rejected"):
        return False  # hvmesh images have no members
    if q.get("protected", "").lower() in TRUE or q.get("os_hidden", "").lower() in TRUE:
        return False  # nor protected or hidden ones
    if q.getall("tag", []):
        return False  # nor tags
    return all(image.get(key) == q[key] for key in ("name", "status") if key in q)


def _check_filters(c: Glance) -> None:
    q = c.request.query
    if q.get("visibility", "all") not in VISIBILITIES:
        raise RestError(400, f"visibility: one of {', '.join(VISIBILITIES)}")
    if q.get("member_status", "all") not in MEMBER_STATUSES:
        raise RestError(400, f"member_status: one of {', '.join(MEMBER_STATUSES)}")
    for key in ("protected", "os_hidden"):
        if key in q and q[key].lower() not in TRUE + FALSE:
            raise RestError(400, f"{key}: true or false, not {q[key]!r}")
    _sort_is_by_name(q)


async def _by_ids(c: Glance, raw: str) -> list[dict[str, Any]]:
    """The images an `id` filter names (`ID` or `in:ID,ID,...`) that the caller may see."""
    ids = [i for i in (raw[3:] if raw.startswith("in:") else raw).split(",") if i]
    if len(ids) > MAX_IDS:
        raise RestError(400, f"id: at most {MAX_IDS} ids")

    async def one(ident: str) -> dict[str, Any] | None:
        try:
            return await c.get(ident)
        except (errors.NotFound, RestError) as exc:
            if isinstance(exc, RestError) and exc.status != 404:
                raise
            return None

    found = await asyncio.gather(*(one(i) for i in dict.fromkeys(ids)))
    return [i for i in found if i is not None]


async def index(request: web.Request) -> web.Response:
    """GET /image/v2/images: Glance's filters, `limit` and `marker`, and `next`."""
    c = Glance(request)
    _check_filters(c)
    q = request.query
    out: dict[str, Any] = {"first": "/v2/images", "schema": "/v2/schemas/images"}
    if "id" in q:
        out["images"] = [view(i) for i in await _by_ids(c, q["id"]) if _keep(c, i)]
        return web.json_response(out)
    body: dict[str, Any] = {k: q[k] for k in ("name", "status", "marker") if k in q}
    if "limit" in q:
        try:
            body["limit"] = int(q["limit"])
        except ValueError:
            raise RestError(400, f"limit: {q['limit']!r} is not an integer") from None
    reply = await c.call("list", body)
    out["images"] = [view(i) for i in reply["images"] if _keep(c, i)]
    more = reply.get("images_links") or []
    if more:
        query = {k: v for k, v in q.items() if k != "marker"}
        query["marker"] = more[0]["marker"]
        out["next"] = f"/v2/images?{urlencode(query)}"
    return web.json_response(out)


async def show(request: web.Request) -> web.Response:
    c = Glance(request)
    return web.json_response(view(await c.get(request.match_info["id"])))


def _create_request(c: Glance, body: dict[str, Any]) -> dict[str, Any]:
    """hvmesh.api.images.create's body from Glance's: extra keys become properties."""
    for key in body:
        if key in READ_ONLY and not (key == "owner" and body[key] in (None, c.token.project)):
            raise RestError(403, f"Attribute '{key}' is read-only.")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise RestError(400, "name: hvmesh images need a name")
    if body.get("id") is not None:
        raise RestError(400, "id: hvmesh chooses image ids; leave it out")
    visibility = body.get("visibility", "private")
    if visibility not in ("public", "private"):
        raise RestError(400, f"visibility: public or private (hvmesh has no {visibility!r})")
    if body.get("protected", False) is not False or body.get("os_hidden", False) is not False:
        raise RestError(400, "protected, os_hidden: hvmesh images are neither")
    if body.get("tags") not in (None, []):
        raise RestError(400, "tags: hvmesh images have no tags")
    req: dict[str, Any] = {"name": name, "visibility": visibility, "upload": True}
    for key in ("disk_format", "container_format"):
        if body.get(key) is not None:
            req[key] = body[key]
    for key, field in (("min_ram", "min_ram_mb"), ("min_disk", "min_disk_gb")):
        if body.get(key) is not None:
            req[field] = whole(key, body[key])
    skip = {"name", "id", "visibility", "protected", "os_hidden", "tags", "owner"}
    skip |= {"disk_format", "container_format", "min_ram", "min_disk"}
    req["properties"] = {
        key: property_value(key, value)
        for key, value in body.items()
        if key not in skip and value is not None
    }
    return req


async def create(request: web.Request) -> web.Response:
    """POST /image/v2/images: a queued image, its bytes to follow (PUT .../file)."""
    c = Glance(request)
    body = await json_object(request)
    reply = await c.call("create", _create_request(c, body))
    image = reply["image"]
    LOG.info("rest.image_created", image=image["id"], project=c.token.project)
    return web.json_response(
        view(image), status=201, headers={"Location": f"{c.base}{PREFIX}/v2/images/{image['id']}"}
    )


PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
FIELDS = {"name": "name", "visibility": "visibility", "min_ram": "min_ram_mb",
          "min_disk": "min_disk_gb", "disk_format": "disk_format",
          "container_format": "container_format"}  # fmt: skip


def _update_request(image_id: str, ops: Any) -> dict[str, Any]:
    """hvmesh.api.images.update's body from a Glance JSON patch (add, replace, remove)."""
    if not isinstance(ops, list) or not ops:
        raise RestError(400, "the body is a JSON patch: a list of operations")
    req: dict[str, Any] = {"id": image_id, "properties": {}}
    for i, op in enumerate(ops):
        kind = op.get("op") if isinstance(op, dict) else None
        path = op.get("path") if isinstance(op, dict) else None
        if kind not in ("add", "replace", "remove") or not isinstance(path, str):
            raise RestError(400, f"operation {i}: op add, replace or remove, and a path")
        key = path.removeprefix("/")
        if not key or "/" in key:
            raise RestError(400, f"operation {i}: path {path!r} is not an image attribute")
        if key in READ_ONLY or key == "id":
            raise RestError(403, f"Attribute '{key}' is read-only.")
        if key in ("protected", "os_hidden", "tags"):
            raise RestError(400, f"{key}: hvmesh images have none")
        if key in FIELDS:
            if kind == "remove":
                raise RestError(403, f"Attribute '{key}' cannot be removed.")
            value = op.get("value")
            if key in ("min_ram", "min_disk"):
                value = whole(key, value)
            elif key == "visibility" and value not in ("public", "private"):
                raise RestError(400, f"visibility: public or private (hvmesh has no {value!r})")
            req[FIELDS[key]] = value
        else:
            value = None if kind == "remove" else property_value(key, op.get("value"))
            req["properties"][key] = value
    return req


async def update(request: web.Request) -> web.Response:
    """PATCH /image/v2/images/{id}: a JSON patch applied by images.update in one write."""
    c = Glance(request)
    if request.content_type != PATCH_TYPE:
        raise RestError(415, f"Content-Type: {PATCH_TYPE}")
    image = await c.get(request.match_info["id"])  # an unknown image is a 404 first
    try:
        ops = json.loads(await request.read())
    except ValueError:
        raise RestError(400, "malformed JSON in the request body") from None
    req = _update_request(image["id"], ops)
    for key, value in list(req["properties"].items()):
        if value is None and key not in image.get("properties", {}):
            raise RestError(409, f"Property {key} does not exist.")  # as Glance's remove
    reply = await c.call("update", req)
    return web.json_response(view(reply["image"]))


async def delete(request: web.Request) -> web.Response:
    c = Glance(request)
    image = await c.get(request.match_info["id"])
    await c.call("delete", {"id": image["id"]})
    return web.Response(status=204)


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/v2/images"
    return [
        web.get(PREFIX, versions),
        web.get(f"{PREFIX}/", versions),
        web.get(f"{PREFIX}/versions", versions),
        web.get(f"{PREFIX}/v2", versions),
        web.get(f"{PREFIX}/v2/", versions),
        web.get(p, index),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.patch(p + "/{id}", update),
        web.delete(p + "/{id}", delete),
        web.put(p + "/{id}/file", image_files.upload),
        web.get(p + "/{id}/file", image_files.download),
    ]
