"""One end of a console session's byte stream over NATS, with credit-based flow control.

The agent and the console proxy each hold one ConsolePipe. `send` waits for credit
before it publishes, so at most the peer's window is ever in flight towards it; `recv`
grants credit back only as its caller takes bytes out, so a reader that stops taking
stops its sender, and neither side's memory grows past its window. Each end PINGs while
open and closes the session when the other end has been silent for PEER_TIMEOUT, so a
session whose other end died ends on its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from hvmesh.core import log
from hvmesh.core.protocol import consoles as wire

LOG = log.get_logger(__name__)


class ConsolePipe:
    """Bytes to and from the other end of one console session."""

    def __init__(
        self,
        nc: Client,
        send_subject: str,
        recv_subject: str,
        *,
        send_window: int,
        recv_window: int = wire.WINDOW,
        peer_timeout: float = wire.PEER_TIMEOUT,
        ping_interval: float = wire.PING_INTERVAL,
    ) -> None:
        self.nc = nc
        self.send_subject = send_subject
        self.recv_subject = recv_subject
        self.recv_window = recv_window
        self.peer_timeout = peer_timeout
        self.ping_interval = ping_interval
        self.credit = send_window  # bytes the peer lets us send now
        self.queued = 0  # bytes received, not yet taken by recv
        self.sent = 0  # DATA bytes published, in all
        self.received = 0  # DATA bytes received, in all
        self.close_reason: str | None = None
        self.closed_by_peer = False
        self._inbox: collections.deque[bytes] = collections.deque()
        self._ungranted = 0  # bytes taken since the last CREDIT we sent
        self._data = asyncio.Event()
        self._credit = asyncio.Event()
        self._closed = asyncio.Event()
        self._heard = time.monotonic()
        self._sub: Any = None
        self._pinger: asyncio.Task[None] | None = None
        self.waiting_for_credit = asyncio.Event()  # set while send waits on the peer

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def start(self) -> None:
        """Subscribe to the session's incoming subject and start pinging."""
        self._sub = await self.nc.subscribe(self.recv_subject, cb=self._on_msg)
        self._pinger = asyncio.create_task(self._keepalive(), name=f"ping {self.send_subject}")

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        data = msg.data
        kind = data[:1]
        if kind == wire.DATA:
            chunk = data[1:]
            self.received += len(chunk)
            self.queued += len(chunk)
            if self.queued > self.recv_window:
                await self.close(
                    f"the other end sent {self.queued} bytes past a window of {self.recv_window}"
                )
                return
            self._inbox.append(chunk)
            self._data.set()
        elif kind == wire.CREDIT:
            with contextlib.suppress(ValueError):
                self.credit += int(data[1:] or b"0")
                self._credit.set()
        elif kind == wire.CLOSE:
            self.closed_by_peer = True
            self._finish(data[1:].decode(errors="replace") or "closed by the other end")

    async def _keepalive(self) -> None:
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ping_interval):
                    await self._closed.wait()
            if self.closed:
                return
            if time.monotonic() - self._heard > self.peer_timeout:
                await self.close(f"the other end said nothing for {self.peer_timeout:g} s")
                return
            await self._publish(wire.PING)

    async def _publish(self, data: bytes) -> None:
        try:
            await self.nc.publish(self.send_subject, data)
        except Exception as exc:  # the connection is gone: the session cannot go on
            self._finish(f"NATS: {exc}")

    async def _until(self, event: asyncio.Event) -> None:
        """Wait until `event` is set or the session closes."""
        waiter = asyncio.ensure_future(event.wait())
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((waiter, closer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closer.cancel()

    async def send(self, data: bytes) -> bool:
        """Publish `data` as credit allows; False once the session is closed."""
        view = memoryview(data)
        while view:
            size = min(len(view), wire.CHUNK)
            while self.credit < size and not self.closed:
                self._credit.clear()
                self.waiting_for_credit.set()
                try:
                    await self._until(self._credit)
                finally:
                    self.waiting_for_credit.clear()
            if self.closed:
                return False
            self.credit -= size
            self.sent += size
            await self._publish(wire.DATA + bytes(view[:size]))
            view = view[size:]
        return not self.closed

    async def recv(self) -> bytes:
        """The next bytes from the other end; b"" once the session is closed."""
        while not self._inbox:
            if self.closed:
                return b""
            self._data.clear()
            await self._until(self._data)
        chunk = self._inbox.popleft()
        self.queued -= len(chunk)
        self._ungranted += len(chunk)
        if self._ungranted >= self.recv_window // 4 or not self._inbox:
            grant, self._ungranted = self._ungranted, 0
            if not self.closed:
                await self._publish(wire.CREDIT + str(grant).encode())
        return chunk

    def _finish(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._closed.set()

    async def close(self, reason: str = "closed") -> None:
        """End the session: tell the other end (unless it ended it) and stop listening."""
        if not self.closed:
            self._finish(reason)
            if not self.closed_by_peer:
                with contextlib.suppress(Exception):
                    await self.nc.publish(self.send_subject, wire.CLOSE + reason.encode()[:512])
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def wait_closed(self) -> None:
        await self._closed.wait()
