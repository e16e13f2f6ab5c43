"""The compute API's version documents: GET /compute/ and /compute/v2.1."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest import microversion
from hvmesh.core.rest.identity import base_url

UPDATED = "2013-07-23T11:33:21Z"


def document(request: web.Request) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": microversion.text(microversion.MAX_VERSION),
        "min_version": microversion.text(microversion.MIN_VERSION),
        "updated": UPDATED,
        "links": [{"rel": "self", "href": f"{base_url(request)}/compute/v2.1/"}],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }
        ],
    }


async def versions(request: web.Request) -> web.Response:
    return web.json_response({"versions": [document(request)]})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": document(request)})


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/compute", versions),
        web.get("/compute/", versions),
        web.get("/compute/v2.1", version),
        web.get("/compute/v2.1/", version),
    ]
