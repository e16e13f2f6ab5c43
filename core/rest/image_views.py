"""Image v2 as Glance shows it: version documents, the request context and image views."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from hvmesh.core.bus import micro
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import Authenticated, base_url

CALL_TIMEOUT = 30.0  # seconds one request on NATS may take
PREFIX = "/image"
CURRENT = (2, 9)  # the Glance v2 minor version offered as CURRENT
# Fields Glance computes itself: a create or update naming one is refused (403, as Glance).
READ_ONLY = frozenset(
    [
        "status",
        "owner",
        "size",
        "virtual_size",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "created_at",
        "updated_at",
        "self",
        "file",
        "schema",
        "locations",
        "direct_url",
        "stores",
    ]
)
# Glance's own fields in an image view: properties by these names are not shown on top.
CORE = READ_ONLY | {
    "id",
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "min_ram",
    "min_disk",
    "disk_format",
    "container_format",
    "tags",
}


class Glance(Authenticated):
    """One image request: its token and base URL."""

    async def call(self, verb: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        """A request on hvmesh.api.images.<verb> as the token's NATS user."""
        return await micro.call(
            self.token.nc,
            subjects.api("images", verb),
            body,
            timeout=CALL_TIMEOUT,
            headers=headers,
        )

    async def get(self, image_id: str) -> dict[str, Any]:
        """The image record by id, as Glance finds them: by id only, never by name (a
        404 then, so clients fall back to listing by name), nor one the caller may not see."""
        try:
            reply = await self.call("get", {"id": image_id})
        except errors.Conflict:  # the API found several images by that name
            reply = {"image": {"id": None}}
        image: dict[str, Any] = reply["image"]
        if image["id"] != image_id:
            raise RestError(404, f"No image found with ID {image_id}")
        return image


def iso(t: Any) -> str | None:
    if not isinstance(t, int | float):
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def view(image: dict[str, Any]) -> dict[str, Any]:
    """An hvmesh image record as Glance v2 shows one, properties as top-level keys."""
    ident = image["id"]
    sha256 = image.get("checksum")
    created = iso(image.get("created_at"))
    out: dict[str, Any] = {
        key: value for key, value in (image.get("properties") or {}).items() if key not in CORE
    }
    out.update(
        {
            "id": ident,
            "name": image.get("name"),
            "status": image.get("status", "active"),
            "visibility": image.get("visibility", "public"),
            "protected": False,
            "os_hidden": False,
            "owner": image.get("project") or None,
            "size": image.get("size"),
            "virtual_size": None,
            "checksum": None,  # Glance's checksum is an MD5, which hvmesh does not keep
            "os_hash_algo": "sha256" if sha256 else None,
            "os_hash_value": sha256,
            "min_ram": image.get("min_ram_mb", 0),
            "min_disk": image.get("min_disk_gb", 0),
            "disk_format": image.get("disk_format"),
            "container_format": image.get("container_format"),
            "created_at": created,
            "updated_at": iso(image.get("updated_at")) or created,
            "tags": [],
            "self": f"/v2/images/{ident}",
            "file": f"/v2/images/{ident}/file",
            "schema": "/v2/schemas/image",
        }
    )
    return out


def version_list(request: web.Request) -> dict[str, Any]:
    """Glance's version document: v2.0 to the CURRENT v2 minor version, one URL."""
    href = f"{base_url(request)}{PREFIX}/v2/"
    major, newest = CURRENT
    return {
        "versions": [
            {
                "id": f"v{major}.{minor}",
                "status": "CURRENT" if minor == newest else "SUPPORTED",
                "links": [{"rel": "self", "href": href}],
            }
            for minor in range(newest, -1, -1)
        ]
    }


async def versions(request: web.Request) -> web.Response:
    """GET /image (and /image/v2): the versions offered, 300 as Glance answers."""
    return web.json_response(version_list(request), status=300)


def property_value(key: str, value: Any) -> str:
    """A property's value: Glance's extra properties are strings."""
    if not isinstance(value, str):
        raise RestError(400, f"{key}: an image property's value is a string, not {value!r}")
    return value


def whole(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RestError(400, f"{key}: a whole number, 0 or more, not {value!r}")
    return value
