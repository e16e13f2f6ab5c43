"""The connection to libvirtd: open it, deliver its lifecycle events, and reopen it when
it is lost.

libvirt's events are dispatched by libvirtaio on its own thread (eventloop.py), started
before the first connection opens; each callback is handed to the loop that opened the
connection. A close callback notices a lost connection
(libvirtd restarted, the socket gone); from then on `healthy` is False and a reconnect
loop retries with exponential backoff, up to [libvirt] reconnect_max_delay between
tries, registering the callbacks again on the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import libvirt

from hvmesh.agents.driver import DriverError
from hvmesh.agents.libvirt import eventloop
from hvmesh.core import log

LOG = log.get_logger(__name__)

#: Called with (domain name, lifecycle event, detail) for every lifecycle event.
LifecycleHandler = Callable[[str, int, int], None]

FIRST_RETRY_DELAY = 0.5


class Connection:
    def __init__(self, uri: str, max_delay: float, on_lifecycle: LifecycleHandler) -> None:
        self.uri = uri
        self.max_delay = max_delay
        self.on_lifecycle = on_lifecycle
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set while a connection is open; tests and callers may wait on it.
        self.connected = asyncio.Event()

    @property
    def healthy(self) -> bool:
        return self._conn is not None

    def get(self) -> libvirt.virConnect:
        """The open connection; DriverError while there is none."""
        if self._conn is None:
            raise DriverError(f"not connected to libvirt at {self.uri}: reconnecting")
        return self._conn

    async def open(self) -> None:
        """Connect (the first time: DriverError if libvirtd cannot be reached)."""
        eventloop.ensure_running()
        self._loop = asyncio.get_running_loop()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise DriverError(f"cannot connect to libvirt at {self.uri}: {exc}") from None
        conn.registerCloseCallback(self._closed, None)
        self._callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
        )
        self._conn = conn
        self.connected.set()
        LOG.info("libvirt.connected", uri=self.uri)

    def _hand_over(self, fn: Callable[..., None], *args: object) -> None:
        """Run `fn` on the loop that opened the connection (callbacks come on libvirt's
        event thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(fn, *args)

    def _lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _o: None
    ) -> None:
        self._hand_over(self._deliver, dom.name(), event, detail)

    def _deliver(self, name: str, event: int, detail: int) -> None:
        try:
            self.on_lifecycle(name, event, detail)
        except Exception:
            LOG.exception("libvirt.event_failed", uri=self.uri)

    def _closed(self, _conn: libvirt.virConnect, reason: int, _opaque: None) -> None:
        """libvirt's close callback: the connection is gone (not closed by us)."""
        self._hand_over(self._lost, reason)

    def _lost(self, reason: int) -> None:
        if self._closing or self._conn is None:
            return
        LOG.warning("libvirt.connection_lost", uri=self.uri, reason=reason)
        self._conn = None
        self._callback_id = None
        self.connected.clear()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = min(FIRST_RETRY_DELAY, self.max_delay)
        while not self._closing:
            try:
                await self.open()
                return
            except DriverError as exc:
                LOG.warning(
                    "libvirt.reconnect_failed", uri=self.uri, error=str(exc), retry_in=delay
                )
            await asyncio.sleep(delay)  # the backoff between tries, not a wait for a state
            delay = min(delay * 2, self.max_delay)

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
            conn.unregisterCloseCallback()
            conn.close()
        LOG.info("libvirt.disconnected", uri=self.uri)
