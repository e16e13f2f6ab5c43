"""Starting and stopping hvmesh's services in one process, on uvloop, until a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import uvloop
from nats.aio.client import Client

from hvmesh.agents.runtime import AgentRuntime
from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.plugins import manager

LOG = log.get_logger(__name__)
T = TypeVar("T")


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a uvloop event loop."""
    return uvloop.run(coro)


async def serve(
    components: Sequence[Component],
    on_ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start `components` in order, wait for SIGINT/SIGTERM (or `stop`), stop them in reverse."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[Component] = []
    try:
        for c in components:
            await c.start()
            started.append(c)
        if on_ready:
            on_ready()
        await stop.wait()
        LOG.info("launcher.stopping")
    finally:
        for c in reversed(started):
            try:
                await c.stop()
            except Exception:
                LOG.exception("launcher.stop_failed", component=type(c).__name__)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def make_agent(
    nc: Client, cfg: Config, driver: str, host: str, registry: manager.Registry | None = None
) -> AgentRuntime:
    """An agent runtime for `host` with the registered driver called `driver`."""
    registry = registry or manager.configured(cfg)
    driver_cls = registry.driver(driver)
    return AgentRuntime(nc, cfg, driver_cls(host, cfg))


def load_plugins(cfg: Config) -> manager.Registry:
    """The installed plugins, as `cfg` asks ([plugins] disabled and strict)."""
    return manager.configured(cfg)


def fake_fleet(
    nc: Client,
    cfg: Config,
    count: int,
    prefix: str = "fake",
    registry: manager.Registry | None = None,
) -> list[AgentRuntime]:
    """`count` simulated hosts named <prefix>-0001 ... sharing one connection."""
    registry = registry or manager.configured(cfg)
    width = max(4, len(str(count)))
    return [
        make_agent(nc, cfg, "fake", f"{prefix}-{i:0{width}d}", registry)
        for i in range(1, count + 1)
    ]
