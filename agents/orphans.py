"""The audit's quick requests to an agent: what its hypervisor runs, and removing an orphan.

`hvmesh.agent.<host>.list_instances` answers the instances the hypervisor runs and the
servers whose images the cache pins. `hvmesh.agent.<host>.destroy_orphan` removes one
server's instance and its pins, but only if, read again under the server's lock (the
lock its work items take), the server is still not this host's: a server placed here or
moving to or from here meanwhile keeps its instance (agents/reconcile.py decides).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.image_cache import ImageCache
from hvmesh.agents.reconcile import placed_here, remove_if_not_placed
from hvmesh.core import log
from hvmesh.core.bus import micro as bus
from hvmesh.core.protocol.base import encode
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

VERBS = ("list_instances", "destroy_orphan")


class Agent(Protocol):
    """What these requests need of the agent runtime."""

    nc: Client
    host: str
    driver: ComputeDriver
    store: Store | None
    images: ImageCache | None

    def hold(self, server_id: str) -> AbstractAsyncContextManager[None]: ...


class OrphanRequest(msgspec.Struct, forbid_unknown_fields=True):
    server_id: str


def handlers(agent: Agent) -> dict[str, Callable[[Msg], Coroutine[Any, Any, None]]]:
    """The handler of each request this module answers, by its subject's last token."""
    return {verb: functools.partial(answer, agent) for verb in VERBS}


async def list_instances(agent: Agent) -> dict[str, list[str]]:
    try:
        instances = sorted(await agent.driver.list_instances())
    except NotImplementedError:
        instances = []
    pinned = agent.images.pinned_servers() if agent.images is not None else []
    return {"instances": instances, "pinned": pinned}


async def destroy_orphan(agent: Agent, server_id: str) -> dict[str, bool]:
    """Remove the instance and the pins of a server this host does not account for."""
    assert agent.store is not None
    try:
        destroyed = await remove_if_not_placed(
            agent.store, agent.driver, agent.host, agent.hold, server_id
        )
    except NotImplementedError:
        destroyed = False
    unpinned = False
    async with agent.hold(server_id):
        entry = await agent.store.servers.get(server_id)
        if agent.images is not None and not placed_here(entry.value if entry else None, agent.host):
            unpinned = server_id in agent.images.pinned_servers()
            agent.images.unpin(server_id)
    return {"destroyed": destroyed, "unpinned": unpinned}


async def answer(agent: Agent, msg: Msg) -> None:
    """Answer one list_instances or destroy_orphan request."""
    verb = msg.subject.rsplit(".", 1)[-1]
    try:
        if verb == "list_instances":
            reply: dict = await list_instances(agent)
        else:
            try:
                req = msgspec.json.decode(msg.data or b"{}", type=OrphanRequest)
            except msgspec.DecodeError as exc:
                await bus.reply_error(agent.nc, msg, 400, f"destroy_orphan: {exc}")
                return
            reply = await destroy_orphan(agent, req.server_id)
        await msg.respond(encode(reply))
    except Exception as exc:
        LOG.exception("agent.orphan_request_failed", host=agent.host, verb=verb)
        await bus.reply_error(agent.nc, msg, 500, f"{type(exc).__name__}: {exc}")
