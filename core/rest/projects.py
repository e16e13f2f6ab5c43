"""Keystone v3 project look-ups: a project is a NATS account, shown by its name as its id."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import DOMAIN, authenticated, base_url
from hvmesh.core.rest.tokens import Token

ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}\Z")  # what a NATS account's name may be


def project_view(request: web.Request, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "name": name,
        "domain_id": DOMAIN["id"],
        "parent_id": DOMAIN["id"],
        "description": "",
        "enabled": True,
        "is_domain": False,
        "tags": [],
        "options": {},
        "links": {"self": f"{base_url(request)}/identity/v3/projects/{name}"},
    }


def visible(token: Token, name: str) -> bool:
    """The caller's own project; any account name for the admin (NATS does not list them)."""
    if name == token.project:
        return True
    return "admin" in token.roles and ACCOUNT_NAME.match(name) is not None


async def show(request: web.Request) -> web.Response:
    """GET /identity/v3/projects/{id}."""
    token = authenticated(request)
    name = request.match_info["id"]
    if not visible(token, name):
        raise RestError(404, f"Could not find project: {name}.", identity=True)
    return web.json_response({"project": project_view(request, name)})


async def index(request: web.Request) -> web.Response:
    """GET /identity/v3/projects?name=: the named project, when the caller may see it."""
    token = authenticated(request)
    name = request.query.get("name")
    if name is None:
        raise RestError(
            501, "listing projects needs a name: NATS accounts are not listed", identity=True
        )
    domain = request.query.get("domain_id")
    found = visible(token, name) and domain in (None, DOMAIN["id"])
    projects = [project_view(request, name)] if found else []
    links = {"self": str(request.url), "next": None, "previous": None}
    return web.json_response({"projects": projects, "links": links})


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/identity/v3/projects", index),
        web.get("/identity/v3/projects/{id}", show),
    ]
