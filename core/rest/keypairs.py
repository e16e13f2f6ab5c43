"""Compute os-keypairs: list, show, create (import; generate before 2.92), delete on NATS."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hvmesh.core import log
from hvmesh.core.rest.calls import PREFIX, Compute, json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import iso
from hvmesh.core.rest.legacy_ids import number, only_query

LOG = log.get_logger(__name__)


class KeypairBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /os-keypairs' `keypair` object, as Nova takes it."""

    name: str
    public_key: str | None = None
    type: str | None = None
    user_id: str | None = None


# Nova's keypair names: these characters, and from 2.92 also "@" and "."
NAME = re.compile(r"[_\- a-zA-Z0-9]{1,255}")
NAME_V292 = re.compile(r"[_\-@. a-zA-Z0-9]{1,255}")


def view(c: Compute, k: dict[str, Any], full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": k["name"],
        "public_key": k["public_key"],
        "fingerprint": k["fingerprint"],
    }
    if c.at_least(2, 2):
        out["type"] = k.get("type", "ssh")
    if full:
        out.update(
            {
                "id": number("keypair", k["id"]),
                "user_id": k["user"],
                "created_at": iso(k["created_at"]),
                "updated_at": None,
                "deleted": False,
                "deleted_at": None,
            }
        )
    return out


def own_user(c: Compute) -> None:
    """hvmesh serves each user their own keypairs: `user_id` may only name the caller."""
    user = c.request.query.get("user_id")
    if user is None or user == c.token.user or not c.at_least(2, 10):
        return  # before 2.10 Nova ignores the parameter
    if not c.is_admin:
        raise RestError(403, f"Policy doesn't allow keypairs of user {user} to be read")
    raise RestError(501, "user_id: hvmesh serves a user's own keypairs only")


def strict_query(c: Compute, *allowed: str) -> None:
    """From 2.75 Nova refuses query parameters it does not know."""
    if c.at_least(2, 75):
        only_query(c, ("user_id", *allowed))


async def index(request: web.Request) -> web.Response:
    c = Compute(request)
    strict_query(c, "limit", "marker")
    own_user(c)
    body: dict[str, Any] = {}
    if c.at_least(2, 35):
        limit = c.int_query("limit")
        if limit is not None:
            body["limit"] = limit
        if "marker" in request.query:
            body["marker"] = request.query["marker"]
    reply = await c.call("keypairs", "list", body)
    out: dict[str, Any] = {"keypairs": [{"keypair": view(c, k, False)} for k in reply["keypairs"]]}
    more = c.next_link(reply, "keypairs", "os-keypairs") if c.at_least(2, 35) else []
    if more:
        out["keypairs_links"] = more
    return c.reply(out)


async def show(request: web.Request) -> web.Response:
    c = Compute(request)
    strict_query(c)
    own_user(c)
    reply = await c.call("keypairs", "get", {"name": request.match_info["name"]})
    return c.reply({"keypair": view(c, reply["keypair"], True)})


def generate() -> tuple[str, str]:
    """A new RSA key pair, as Nova generates one: (OpenSSH public key, PEM private key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{public.decode()} Generated-by-hvmesh", private


def check_name(c: Compute, name: str) -> None:
    """Nova's keypair name rules at the request's version: 400 naming the field."""
    new = c.at_least(2, 92)
    chars = "letters, digits, spaces, _ - @ ." if new else "letters, digits, spaces, _ -"
    if (NAME_V292 if new else NAME).fullmatch(name) is None or name != name.strip():
        raise RestError(
            400, f"keypair.name: 1 to 255 {chars}, no leading or trailing space; not {name!r}"
        )


async def create(request: web.Request) -> web.Response:
    c = Compute(request)
    try:
        body = msgspec.convert(await json_body(request, "keypair"), KeypairBody)
    except msgspec.ValidationError as exc:
        raise RestError(400, f"keypair: {exc}") from None
    check_name(c, body.name)
    if body.type is not None and not c.at_least(2, 2):
        raise RestError(400, "keypair.type: a field from microversion 2.2")
    if body.type not in (None, "ssh"):
        raise RestError(400, f"keypair.type: hvmesh keeps ssh keypairs only, not {body.type!r}")
    if body.user_id is not None and not c.at_least(2, 10):
        raise RestError(400, "keypair.user_id: a field from microversion 2.10")
    if body.public_key is None and c.at_least(2, 92):
        raise RestError(
            400, "keypair.public_key: required from microversion 2.92 (keys are not generated)"
        )
    if body.user_id not in (None, c.token.user):
        raise RestError(501, "keypair.user_id: hvmesh creates keypairs for their own user only")
    private = None
    public = body.public_key
    if public is None:
        public, private = await asyncio.to_thread(generate)
    reply = await c.call("keypairs", "create", {"name": body.name, "public_key": public})
    out = view(c, reply["keypair"], False)
    out["user_id"] = reply["keypair"]["user"]
    if private is not None:
        out["private_key"] = private
    LOG.info("rest.keypair.created", name=body.name, generated=private is not None)
    return c.reply({"keypair": out}, status=201 if c.at_least(2, 2) else 200)


async def delete(request: web.Request) -> web.Response:
    c = Compute(request)
    strict_query(c)
    own_user(c)
    await c.call("keypairs", "delete", {"name": request.match_info["name"]})
    return c.reply(None, status=204 if c.at_least(2, 2) else 202)


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/os-keypairs"
    return [
        web.get(p, index),
        web.post(p, create),
        web.get(p + "/{name}", show),
        web.delete(p + "/{name}", delete),
    ]
