"""What compute handlers share: the token's NATS requests, versioned replies, links and paging."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hvmesh.core.bus import micro
from hvmesh.core.protocol import subjects
from hvmesh.core.rest import microversion
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import Authenticated

CALL_TIMEOUT = 30.0  # seconds one request on NATS may take
PREFIX = "/compute/v2.1"


class Compute(Authenticated):
    """One compute request: its token, microversion and base URL."""

    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        self.version = microversion.negotiate(request.headers)

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= (major, minor)

    async def call(self, resource: str, verb: str, body: dict[str, Any]) -> Any:
        """A request on hvmesh.api.<resource>.<verb> as the token's NATS user."""
        return await micro.call(
            self.token.nc, subjects.api(resource, verb), body, timeout=CALL_TIMEOUT
        )

    def reply(
        self, body: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        response = (
            web.Response(status=status) if body is None else web.json_response(body, status=status)
        )
        response.headers.update(microversion.response_headers(self.version))
        response.headers.update(headers or {})
        return response

    def links(self, collection: str, ident: str) -> list[dict[str, str]]:
        return [
            {"rel": "self", "href": f"{self.base}{PREFIX}/{collection}/{ident}"},
            {"rel": "bookmark", "href": f"{self.base}/compute/{collection}/{ident}"},
        ]

    def next_link(self, reply: dict[str, Any], key: str, path: str) -> list[dict[str, str]]:
        """`<key>_links` with the next page's href, when the NATS reply says more follow."""
        more = reply.get(f"{key}_links") or []
        if not more:
            return []
        query = {k: v for k, v in self.request.query.items() if k != "marker"}
        query["marker"] = more[0]["marker"]
        return [{"rel": "next", "href": f"{self.base}{PREFIX}/{path}?{urlencode(query)}"}]

    def int_query(self, name: str) -> int | None:
        raw = self.request.query.get(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise RestError(400, f"{name}: {raw!r} is not an integer") from None
        if value < 0:
            raise RestError(400, f"{name}: must be 0 or more, not {value}")
        return value


def ref_id(ref: Any, what: str) -> str:
    """An id from a reference that may be a URL (its last path segment), as Nova takes them."""
    if not isinstance(ref, str) or not ref.strip():
        raise RestError(400, f"{what}: an id (or a link to one)")
    return ref.rstrip("/").rsplit("/", 1)[-1]


async def json_object(request: web.Request) -> dict[str, Any]:
    """A JSON request body that is an object; 400 otherwise."""
    try:
        body = await request.json()
    except ValueError:
        raise RestError(400, "malformed JSON in the request body") from None
    if not isinstance(body, dict):
        raise RestError(400, "the request body is a JSON object")
    return body


async def json_body(request: web.Request, key: str) -> dict[str, Any]:
    """The object under `key` of a JSON request body; 400 when it is missing or not one."""
    body = await json_object(request)
    inner = body.get(key)
    if not isinstance(inner, dict):
        raise RestError(400, f"the request body needs a {key!r} object")
    return inner
