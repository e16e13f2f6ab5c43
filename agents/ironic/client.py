"""One connection to Ironic shared by an agent's node drivers: openstacksdk's blocking calls in threads, and a probe that tells whether Ironic answers.

openstacksdk's baremetal proxy is blocking, so every call runs in a worker thread. The
connection is made from [ironic]: no auth with the API's address, HTTP basic with a user
and password, or a clouds.yaml cloud (Keystone). A call that cannot reach Ironic marks
the link unhealthy (the agent's hosts stop heartbeating); a probe every
`probe_interval` (doubling, up to MAX_BACKOFF, while Ironic stays away) marks it healthy
again once the API answers. The probe lists the nodes of [ironic] conductor_group, and
hands each subscribed node driver its node when it changed (maintenance, provision or
power state, traits), so changes made in Ironic reach the agent without a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hvmesh.agents.driver import DriverError
from hvmesh.core import log
from hvmesh.core.config_drivers import IronicSection
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

T = TypeVar("T")

#: What a node driver is told when the listing sees its node change: (before, after).
NodeListener = Callable[[Any, Any], Awaitable[None]]

#: Longest wait between two probes of an Ironic that does not answer.
MAX_BACKOFF = 30.0
#: Seconds one HTTP request to Ironic may take.
API_TIMEOUT = 30.0
#: Threads for concurrent calls (one per node being deployed, reads).
THREADS = 8


class Unreachable(DriverError):
    """Ironic's API could not be reached."""


def connect(cfg: IronicSection) -> Any:
    """An openstack.connection.Connection to Ironic as [ironic] says (no I/O yet)."""
    from openstack import connection

    verify: bool | str = False if cfg.insecure else (cfg.ca_file or True)
    common: dict[str, Any] = {"verify": verify, "api_timeout": API_TIMEOUT}
    if cfg.api_url:
        common["baremetal_endpoint_override"] = cfg.api_url
    if cfg.auth_type == "keystone":
        if not cfg.cloud:
            raise DriverError("[ironic] auth_type keystone needs `cloud` (a clouds.yaml name)")
        import openstack

        try:
            return openstack.connect(cloud=cfg.cloud, **common)
        except Exception as exc:  # openstack.exceptions.ConfigException and friends
            raise DriverError(f"[ironic] cloud {cfg.cloud!r}: {exc}") from None
    if not cfg.api_url:
        raise DriverError(f"[ironic] auth_type {cfg.auth_type} needs api_url")
    if cfg.auth_type == "http_basic":
        if not cfg.username:
            raise DriverError("[ironic] auth_type http_basic needs username and password")
        auth = {"username": cfg.username, "password": cfg.password, "endpoint": cfg.api_url}
        return connection.Connection(auth_type="http_basic", auth=auth, **common)
    return connection.Connection(auth_type="none", **common)


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says Ironic could not be reached (not that it refused something)."""
    from keystoneauth1 import exceptions as ka
    from openstack import exceptions as sdk

    if isinstance(exc, ka.ConnectFailure | ka.ConnectTimeout | ka.RequestTimeout | OSError):
        return True
    if isinstance(exc, sdk.HttpException):
        return exc.status_code is not None and exc.status_code >= 502
    return False


def message(exc: BaseException) -> str:
    """Ironic's own message of an error, else the exception's."""
    details = getattr(exc, "details", None)
    return str(details) if details else f"{type(exc).__name__}: {exc}"


def changes(node: Any) -> tuple[Any, ...]:
    """What of a node the agent follows."""
    return (
        node.provision_state,
        node.is_maintenance,
        node.power_state,
        node.instance_id,
        node.resource_class,
        tuple(node.traits or ()),
    )


class Link:
    """The connection, its threads, and whether Ironic answers now."""

    def __init__(self, cfg: IronicSection, name: str, probe_interval: float) -> None:
        self.cfg = cfg
        self.name = name
        self.probe_interval = probe_interval
        self.conn: Any = None
        self.healthy = False
        self._pool: ThreadPoolExecutor | None = None
        self._probe: list[asyncio.Task[None]] = []
        self._users = 0
        self._lock = asyncio.Lock()
        self._listeners: dict[str, NodeListener] = {}
        self._seen: dict[str, Any] = {}  # node uuid -> the node as last listed

    @property
    def baremetal(self) -> Any:
        if self.conn is None:
            raise DriverError("the Ironic driver is not connected (init_host did not run)")
        return self.conn.baremetal

    async def acquire(self) -> None:
        """Open the link for one more driver (connecting if it is the first): the first
        fails when Ironic does not answer, so a misconfigured agent does not start."""
        async with self._lock:
            if self._users == 0:
                self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix=f"ironic-{self.name}")
                try:
                    self.conn = await self._in_thread(lambda: connect(self.cfg))
                    await self.call(lambda bm: bm.get("/"), "reaching Ironic's API")
                except BaseException:
                    await self._close()
                    raise
                self.healthy = True
                self._probe.append(asyncio.create_task(self._probe_loop()))
            self._users += 1

    async def release(self) -> None:
        """One driver is done with the link; the last one closes it."""
        async with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                await self._close()

    async def _close(self) -> None:
        await stop_tasks(self._probe)
        self._probe.clear()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self._in_thread(self.conn.close)
            self.conn = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.healthy = False

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn)

    async def call(self, fn: Callable[[Any], T], what: str) -> T:
        """fn(baremetal proxy) in a thread. Ironic unreachable: Unreachable (and the link
        unhealthy); an error Ironic answered: DriverError with its message, naming `what`;
        openstack's NotFoundException passes through for callers that look things up."""
        from openstack import exceptions as sdk

        proxy = self.baremetal
        try:
            result = await self._in_thread(lambda: fn(proxy))
        except sdk.NotFoundException:
            raise
        except DriverError:
            raise
        except Exception as exc:
            if is_unreachable(exc):
                if self.healthy:
                    LOG.warning("ironic.unreachable", link=self.name, error=message(exc))
                self.healthy = False
                raise Unreachable(f"{what}: Ironic does not answer: {message(exc)}") from None
            raise DriverError(f"{what}: {message(exc)}") from None
        return result

    def subscribe(self, node_id: str, listener: NodeListener, node: Any) -> None:
        """Hand changes of node `node_id` to `listener`, from `node` as the driver read it."""
        self._listeners[node_id] = listener
        self._seen[node_id] = node

    def unsubscribe(self, node_id: str) -> None:
        self._listeners.pop(node_id, None)

    async def list_nodes(self) -> list[Any]:
        """The nodes of [ironic] conductor_group (every node when it is unset), in detail."""
        query: dict[str, Any] = {"details": True}
        if self.cfg.conductor_group:
            query["conductor_group"] = self.cfg.conductor_group
        group = self.cfg.conductor_group or "(any)"
        found: list[Any] = await self.call(
            lambda bm: list(bm.nodes(**query)), f"listing the nodes of conductor group {group}"
        )
        return found

    async def _dispatch(self, listed: list[Any]) -> None:
        for node in listed:
            before = self._seen.get(node.id)
            self._seen[node.id] = node
            listener = self._listeners.get(node.id)
            if before is None or listener is None or changes(before) == changes(node):
                continue
            try:
                await listener(before, node)
            except Exception:
                LOG.exception("ironic.node_change_failed", node=node.id)

    async def _probe_loop(self) -> None:
        delay = self.probe_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self._dispatch(await self.list_nodes())
            except Exception as exc:
                self.healthy = False
                delay = min(max(delay * 2, self.probe_interval), MAX_BACKOFF)
                LOG.debug("ironic.probe_failed", link=self.name, error=str(exc), next=delay)
                continue
            if not self.healthy:
                LOG.info("ironic.reachable", link=self.name)
            self.healthy = True
            delay = self.probe_interval
