"""Live consoles of libvirt guests: the serial port over a libvirt stream, the screen over VNC."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET

import libvirt

from hvmesh.agents.driver import CONSOLE_CHUNK, ConsoleChannel, DriverError
from hvmesh.agents.libvirt import eventloop
from hvmesh.core import log

LOG = log.get_logger(__name__)

#: Stream events that end a wait for bytes from the guest, or for room to send to it.
_ENDED = libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
_READ_EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | _ENDED
_WRITE_EVENTS = libvirt.VIR_STREAM_EVENT_WRITABLE | _ENDED
#: Where a VNC server listening on every address is reached from this host.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class SerialConsole:
    """The guest's first serial port, as a non-blocking libvirt stream.

    The stream is watched only while a read or write waits on it, so a reader that stops
    leaves the backlog with libvirt. Its events come on libvirt's event thread, where
    the watch is also changed; waiters are woken on the loop that opened the console.
    """

    def __init__(self, server_id: str, stream: libvirt.virStream) -> None:
        self.server_id = server_id
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._events_loop = eventloop.ensure_running()
        self._watching = 0  # only read and changed on libvirt's event thread
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._ended = False  # the guest's side closed (EOF or an error)
        self._closed = False
        stream.eventAddCallback(0, self._on_event, None)

    # --- on libvirt's event thread ------------------------------------------------------

    def _watch(self, events: int) -> None:
        if self._closed:
            return
        self._watching |= events
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventUpdateCallback(self._watching)

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        # Stream events are level-triggered: stop watching what fired until asked again.
        self._watching = 0 if events & _ENDED else self._watching & ~events
        with contextlib.suppress(libvirt.libvirtError):
            stream.eventUpdateCallback(self._watching)
        with contextlib.suppress(RuntimeError):  # the agent's loop closed meanwhile
            self._loop.call_soon_threadsafe(self._wake, events)

    # --- on the agent's loop ------------------------------------------------------------

    def _wake(self, events: int) -> None:
        for kind in (_READ_EVENTS, _WRITE_EVENTS):
            waiter = self._waiters.get(kind)
            if waiter is not None and events & kind and not waiter.done():
                waiter.set_result(None)

    async def _wait(self, events: int) -> None:
        """Until the stream has what `events` ask for (or ended, or the console closed)."""
        waiter = self._loop.create_future()
        self._waiters[events] = waiter
        try:
            self._events_loop.call_soon_threadsafe(self._watch, events)
            await waiter
        finally:
            self._waiters.pop(events, None)

    async def read(self) -> bytes:
        while not (self._closed or self._ended):
            try:
                got: bytes | int = self._stream.recv(CONSOLE_CHUNK)
            except libvirt.libvirtError as exc:
                LOG.info("libvirt.console_ended", server=self.server_id, error=str(exc))
                self._ended = True
                break
            if isinstance(got, int):  # -2: nothing yet; wait for libvirt to say there is
                await self._wait(_READ_EVENTS)
                continue
            if not got:
                self._ended = True
                break
            return got
        return b""

    async def write(self, data: bytes) -> None:
        """Everything in `data` to the guest; dropped once the console ended or closed."""
        view = memoryview(data)
        while view and not (self._closed or self._ended):
            try:
                sent: int = self._stream.send(bytes(view[:CONSOLE_CHUNK]))
            except libvirt.libvirtError as exc:
                LOG.info("libvirt.console_ended", server=self.server_id, error=str(exc))
                self._ended = True
                return
            if sent == -2:  # libvirt's queue is full: wait for room
                await self._wait(_WRITE_EVENTS)
                continue
            view = view[sent:]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        # The callback goes first (libvirt's rule for a non-blocking stream), on the
        # thread that dispatches it; then the stream ends, which asks libvirtd.
        removed = asyncio.run_coroutine_threadsafe(self._unwatch(), self._events_loop)
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(removed)
        ending = self._stream.finish if self._ended else self._stream.abort
        try:
            await asyncio.to_thread(ending)
        except libvirt.libvirtError as exc:
            LOG.debug("libvirt.console_close", server=self.server_id, error=str(exc))
        LOG.info("libvirt.console_closed", server=self.server_id, protocol="serial")

    async def _unwatch(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()


class VncConsole:
    """The RFB stream of the guest's VNC server, over TCP."""

    def __init__(
        self, server_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server_id = server_id
        self._reader = reader
        self._writer = writer
        self._closed = False

    async def read(self) -> bytes:
        if self._closed:
            return b""
        try:
            return await self._reader.read(CONSOLE_CHUNK)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        if self._closed or self._writer.is_closing():
            return
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            LOG.info("libvirt.console_ended", server=self.server_id, error=str(exc))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        LOG.info("libvirt.console_closed", server=self.server_id, protocol="vnc")


async def open_serial(
    conn: libvirt.virConnect, dom: libvirt.virDomain, server_id: str
) -> ConsoleChannel:
    """The serial console of the running domain, taken over from any other client."""
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        await asyncio.to_thread(dom.openConsole, None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        channel = SerialConsole(server_id, stream)
    except libvirt.libvirtError as exc:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise DriverError(
            f"opening the serial console of {server_id}: {exc.get_error_message()}"
        ) from None
    LOG.info("libvirt.console_opened", server=server_id, protocol="serial")
    return channel


def vnc_address(live_xml: str, server_id: str) -> tuple[str, int]:
    """Where the VNC server of a running domain listens, from its live XML (host, port);
    DriverError when it has none."""
    root = ET.fromstring(live_xml)
    graphics = root.find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise DriverError(f"server {server_id} has no VNC console: its domain has no VNC server")
    try:
        port = int(graphics.get("port", "-1"))
    except ValueError:
        port = -1
    if port <= 0:
        raise DriverError(f"server {server_id} has no VNC console: its VNC server has no port")
    listen = graphics.get("listen") or ""
    address = graphics.find("listen[@type='address']")
    if not listen and address is not None:
        listen = address.get("address", "")
    return _ANY_ADDRESS.get(listen, listen), port


async def open_vnc(dom: libvirt.virDomain, server_id: str) -> ConsoleChannel:
    """A connection to the VNC server of the running domain."""
    try:
        live = dom.XMLDesc(0)
    except libvirt.libvirtError as exc:
        raise DriverError(f"reading the VNC server of {server_id}: {exc}") from None
    host, port = vnc_address(live, server_id)
    try:
        # A small reader limit: the reader stops reading past about one chunk.
        reader, writer = await asyncio.open_connection(host, port, limit=CONSOLE_CHUNK // 2)
    except OSError as exc:
        raise DriverError(
            f"server {server_id}: cannot reach its VNC server at {host}:{port}: {exc}"
        ) from None
    LOG.info("libvirt.console_opened", server=server_id, protocol="vnc", address=f"{host}:{port}")
    return VncConsole(server_id, reader, writer)
