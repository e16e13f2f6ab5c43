"""Idempotent servers.create: a client token makes a retried create return the same servers.

A create whose body names `client_token` (API 1.1 and later) first claims the token in
the KV bucket `client_tokens` with compare-and-set: one request wins and boots, and it
writes its reply under the token, kept for a day. A retry with the same token and body,
from the same project, gets that reply back (the servers as they are now) without a
second boot or quota charge; one arriving while the first is under way waits for its
reply. The same token with another body is a 409. A create that fails lets its token go,
so a retry tries again; a token whose create has been under way for STALE_AFTER seconds
(its API process died) is taken over.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.views import server_view
from hvmesh.core.bus.micro import Caller
from hvmesh.core.bus.microversion import HEADER
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.client_tokens import ClientToken
from hvmesh.core.protocol.requests import ServerCreate
from hvmesh.core.state.store import Bucket, CasConflict

LOG = log.get_logger(__name__)

MIN_VERSION = (1, 1)  # the microversion that added client_token
WAIT_FOR_FIRST = 60.0  # seconds a retry waits for the create under way to answer
STALE_AFTER = 300.0  # seconds after which a create still under way is taken to have died

Create = Callable[[Caller, ServerCreate], Awaitable[dict[str, Any]]]


def token_key(project: str, token: str) -> str:
    """The token's KV key: a digest of the project and the token (any characters)."""
    return hashlib.sha256(f"{project}\n{token}".encode()).hexdigest()[:48]


def body_digest(req: ServerCreate) -> str:
    """The SHA-256 of the request without its token, its maps' keys in order."""
    bare = msgspec.structs.replace(req, client_token=None)
    data = msgspec.json.encode(msgspec.to_builtins(bare), order="sorted")
    return hashlib.sha256(data).hexdigest()


async def create_once(
    api: ApiContext, caller: Caller, req: ServerCreate, create: Create
) -> dict[str, Any]:
    """`create(caller, req)` once per (project, client_token); retries get its reply."""
    token = req.client_token
    assert token is not None
    if caller.version < MIN_VERSION:
        raise errors.BadRequest(
            f"client_token needs API version 1.1 or later (request header {HEADER}: 1.1)"
        )
    bucket = api.st.client_tokens
    key = token_key(caller.project, token)
    digest = body_digest(req)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_FOR_FIRST
    while True:
        entry = await bucket.get(key)
        claim = ClientToken(project=caller.project, token=token, digest=digest)
        if entry is None:
            try:
                revision = await bucket.create(key, claim)
            except CasConflict:
                continue  # another request claimed it first: read what it wrote
            return await _first(bucket, key, claim, revision, caller, req, create)
        held = entry.value
        if held.digest != digest:
            raise errors.Conflict(
                f"client_token {token!r} was used for a different servers.create request "
                "by this project within the last 24 h: use a new token for a new request"
            )
        if held.reply is not None:
            LOG.info("api.client_token_replayed", project=caller.project)
            return await _current(api, caller, held.reply)
        if now() - held.created_at > STALE_AFTER:
            try:
                revision = await bucket.update(key, claim, entry.revision)
            except CasConflict:
                continue
            LOG.warning("api.client_token_taken_over", project=caller.project)
            return await _first(bucket, key, claim, revision, caller, req, create)
        if loop.time() >= deadline:
            raise errors.Conflict(
                f"a servers.create with client_token {token!r} is still under way: "
                "retry it later for its reply"
            )
        await _changed(bucket, key, entry.revision, deadline - loop.time())


async def _first(
    bucket: Bucket[ClientToken],
    key: str,
    claim: ClientToken,
    revision: int,
    caller: Caller,
    req: ServerCreate,
    create: Create,
) -> dict[str, Any]:
    """Run the create that holds the token, then keep its reply (or let the token go)."""
    try:
        reply = await create(caller, req)
    except BaseException:
        try:
            await bucket.delete(key, revision)
        except Exception as exc:  # it expires with the bucket's TTL
            LOG.warning("api.client_token_release_failed", error=str(exc))
        raise
    try:
        await bucket.update(key, msgspec.structs.replace(claim, reply=reply), revision)
    except CasConflict:
        LOG.warning("api.client_token_lost", project=caller.project)
    return reply


async def _current(api: ApiContext, caller: Caller, reply: dict[str, Any]) -> dict[str, Any]:
    """The kept reply, with each server shown as it is now (as it was, if deleted since)."""
    shown = reply.get("servers") or [reply["server"]]
    fresh = []
    for view in shown:
        entry = await api.st.servers.get(view["id"])
        fresh.append(server_view(entry.value, caller) if entry is not None else view)
    out = {**reply, "server": fresh[0]}
    if "servers" in reply:
        out["servers"] = fresh
    return out


async def _changed(bucket: Bucket[ClientToken], key: str, revision: int, within: float) -> None:
    """Return once the token's record changes from `revision` (or `within` seconds pass)."""
    watcher = await bucket.kv.watch(key)
    try:
        async with asyncio.timeout(max(within, 0.0)):
            async for e in watcher:
                if e is not None and (e.revision or 0) != revision:
                    return
    except TimeoutError:
        return
    finally:
        await watcher.stop()
