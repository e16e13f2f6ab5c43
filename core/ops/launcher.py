"""Starting and stopping hvmesh's services in one process, on uvloop, until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import uvloop
from nats.aio.client import Client

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.heartbeats import Heartbeats
from hvmesh.agents.runtime import AgentRuntime
from hvmesh.core import log
from hvmesh.core.bus.start_retry import Retried, StartGuard
from hvmesh.core.config import Config
from hvmesh.plugins import manager

LOG = log.get_logger(__name__)
T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
FLEET_STARTS = 64  # hosts of one process starting at once


class StoppedWhileStarting(Exception):
    """SIGINT or SIGTERM (or the loss of what it needs) came before the start finished."""


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a uvloop event loop."""
    return uvloop.run(coro)


@contextlib.contextmanager
def signals(stop: asyncio.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set `stop` instead of ending the process."""
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


async def until_stopped(step: Awaitable[T], stop: asyncio.Event) -> T:
    """Await `step`, unless `stop` is set first: then cancel it and raise StoppedWhileStarting.

    A cancelled step undoes what it started (each start does: see StartGuard).
    """
    task = asyncio.ensure_future(step)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        cut_short = not task.done()
        if cut_short:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if cut_short:
        raise StoppedWhileStarting("stopped while starting")
    return task.result()


async def serve(
    components: Sequence[Component],
    on_ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start `components` in order, run until SIGINT/SIGTERM (or `stop`), stop them in reverse.

    Given `stop`, the caller handles the signals (see `signals`). Stopped while starting,
    the components started so far are stopped and StoppedWhileStarting is raised.
    """
    own = stop is None
    stop = stop or asyncio.Event()
    started: list[Component] = []

    async def start_all() -> None:
        for c in components:
            await c.start()
            started.append(c)

    with signals(stop) if own else contextlib.nullcontext():
        try:
            await until_stopped(start_all(), stop)
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


class Fleet:
    """Many hosts of one process, each started (and retried) on its own, FLEET_STARTS at once.

    If one host cannot start at all (a permanent error, or its start_timeout passes),
    the others' starts are cancelled, the started ones stopped, and its error raised.
    """

    def __init__(self, members: Sequence[Component], concurrency: int = FLEET_STARTS) -> None:
        self.members = list(members)
        self.concurrency = concurrency
        self.started: list[Component] = []

    async def start(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def start_one(member: Component) -> None:
            async with gate:
                await member.start()
                self.started.append(member)

        try:
            async with asyncio.TaskGroup() as group:
                for member in self.members:
                    group.create_task(start_one(member))
        except BaseExceptionGroup as failed:
            await self.stop()
            raise failed.exceptions[0] from None
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        started, self.started = self.started, []
        for member in reversed(started):
            try:
                await member.stop()
            except Exception:
                LOG.exception("launcher.stop_failed", component=type(member).__name__)


class NodeAgents(Fleet):
    """The agent runtimes of one driver's nodes, found as it starts (ComputeDriver.node_drivers):
    one for most drivers, one per ESXi host or bare-metal node for those that front many.
    Their heartbeats go in groups (`beats`, shared with the rest of the process if given)."""

    def __init__(
        self,
        nc: Client,
        cfg: Config,
        driver_cls: type[ComputeDriver],
        host: str,
        beats: Heartbeats | None = None,
    ) -> None:
        super().__init__([])
        self.nc, self.cfg, self.driver_cls, self.host = nc, cfg, driver_cls, host
        self.beats = beats or Heartbeats(cfg.compute.heartbeat_interval)

    async def start(self) -> None:
        drivers = await self.driver_cls.node_drivers(self.host, self.cfg)
        self.beats.plan(sorted(d.host for d in drivers))
        self.members = [AgentRuntime(self.nc, self.cfg, d, self.beats) for d in drivers]
        LOG.info("agent.nodes", host=self.host, nodes=[d.host for d in drivers])
        await super().start()


def make_agent(
    nc: Client,
    cfg: Config,
    driver: str,
    host: str,
    registry: manager.Registry | None = None,
    beats: Heartbeats | None = None,
) -> AgentRuntime:
    """An agent runtime for `host` with the registered driver called `driver`."""
    registry = registry or manager.configured(cfg)
    driver_cls = registry.driver(driver)
    return AgentRuntime(nc, cfg, driver_cls(host, cfg), beats)


def load_plugins(cfg: Config) -> manager.Registry:
    """The installed plugins, as `cfg` asks ([plugins] disabled and strict)."""
    return manager.configured(cfg)


def fake_names(count: int, prefix: str = "fake") -> list[str]:
    """The names of `count` simulated hosts: <prefix>-0001 ..."""
    width = max(4, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


def fleet_beats(cfg: Config, hosts: list[str]) -> Heartbeats:
    """One process's heartbeat groups for `hosts`, planned in their order."""
    beats = Heartbeats(cfg.compute.heartbeat_interval)
    beats.plan(hosts)
    return beats


def fake_fleet(
    nc: Client,
    cfg: Config,
    count: int,
    prefix: str = "fake",
    registry: manager.Registry | None = None,
) -> list[AgentRuntime]:
    """`count` simulated hosts named <prefix>-0001 ... sharing one connection."""
    registry = registry or manager.configured(cfg)
    names = fake_names(count, prefix)
    beats = fleet_beats(cfg, names)
    return [make_agent(nc, cfg, "fake", host, registry, beats) for host in names]


def retried_agent(
    guard: StartGuard,
    nc: Client,
    cfg: Config,
    driver: str,
    host: str,
    registry: manager.Registry | None = None,
    beats: Heartbeats | None = None,
) -> Retried[NodeAgents]:
    """The agent for `host` (a runtime per node of its driver), its start retried by `guard`
    (fresh runtimes and drivers each time)."""
    registry = registry or manager.configured(cfg)
    driver_cls = registry.driver(driver)
    return guard.component(f"agent {host}", lambda: NodeAgents(nc, cfg, driver_cls, host, beats))


def retried_fleet(
    guard: StartGuard,
    nc: Client,
    cfg: Config,
    count: int,
    prefix: str = "fake",
    registry: manager.Registry | None = None,
) -> Fleet:
    """`count` simulated hosts named as fake_fleet names them, each start retried on its own."""
    registry = registry or manager.configured(cfg)
    names = fake_names(count, prefix)
    beats = fleet_beats(cfg, names)
    return Fleet([retried_agent(guard, nc, cfg, "fake", host, registry, beats) for host in names])
