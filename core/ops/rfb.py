"""A minimal RFB (VNC) client for `hvmesh bench console --vnc`: full raw framebuffers, counted.

It speaks RFB 3.8 with no authentication (what a console proxy's VNC stream and QEMU's
VNC server on loopback offer), asks for raw encoding only, and then requests whole,
non-incremental framebuffer updates one after another, so each update carries the whole
screen: frames per second and bytes per second are the transport's rate for a screen.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Protocol

import aiohttp
import msgspec


class Transport(Protocol):
    async def read(self, n: int) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


class TcpTransport:
    """RFB straight to a VNC server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class WebSocketTransport:
    """RFB in binary WebSocket messages, as noVNC carries it through the console proxy."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.buffer = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise ConnectionError(f"the console closed: {msg.extra or msg.type}")
            self.buffer += msg.data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def write(self, data: bytes) -> None:
        await self.ws.send_bytes(data)


class ScreenRate(msgspec.Struct, kw_only=True):
    width: int
    height: int
    bits_per_pixel: int
    frames: int
    seconds: float
    frames_per_s: float
    mb_per_s: float


async def handshake(t: Transport) -> tuple[int, int, int]:
    """RFB 3.8 with security type None; (width, height, bits per pixel)."""
    version = await t.read(12)
    if not version.startswith(b"RFB "):
        raise ConnectionError(f"not a VNC server: {version!r}")
    await t.write(b"RFB 003.008\n")
    (count,) = struct.unpack("!B", await t.read(1))
    types = await t.read(count)
    if 1 not in types:
        raise ConnectionError(f"the VNC server wants authentication (types {list(types)})")
    await t.write(b"\x01")
    (result,) = struct.unpack("!I", await t.read(4))
    if result != 0:
        raise ConnectionError("the VNC server refused the session")
    await t.write(b"\x01")  # ClientInit: shared
    width, height = struct.unpack("!HH", await t.read(4))
    pixel_format = await t.read(16)
    (name_length,) = struct.unpack("!I", await t.read(4))
    await t.read(name_length)
    await t.write(struct.pack("!BxHi", 2, 1, 0))  # SetEncodings: Raw only
    return width, height, pixel_format[0]


async def full_frame(t: Transport, width: int, height: int, bpp: int) -> int:
    """Ask for the whole screen (not incremental) and read the update; its size in bytes."""
    await t.write(struct.pack("!BBHHHH", 3, 0, 0, 0, width, height))
    while True:
        kind = (await t.read(1))[0]
        if kind == 0:
            break
        if kind == 2:  # Bell
            continue
        if kind == 1:  # SetColourMapEntries
            _, count = struct.unpack("!xHH", await t.read(5))
            await t.read(count * 6)
            continue
        if kind == 3:  # ServerCutText
            (length,) = struct.unpack("!3xI", await t.read(7))
            await t.read(length)
            continue
        raise ConnectionError(f"unexpected RFB message type {kind}")
    (rects,) = struct.unpack("!xH", await t.read(3))
    size = 0
    for _ in range(rects):
        _, _, w, h, encoding = struct.unpack("!HHHHi", await t.read(12))
        if encoding != 0:  # a pseudo-encoding carries no pixels here
            continue
        data = w * h * bpp // 8
        await t.read(data)
        size += data
    return size


async def screen_rate(t: Transport, seconds: float) -> ScreenRate:
    """Whole screens, one after another, for `seconds`."""
    width, height, bpp = await handshake(t)
    frames = total = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        total += await full_frame(t, width, height, bpp)
        frames += 1
    return ScreenRate(
        width=width,
        height=height,
        bits_per_pixel=bpp,
        frames=frames,
        seconds=round(elapsed, 2),
        frames_per_s=round(frames / elapsed, 1),
        mb_per_s=round(total / 2**20 / elapsed, 1),
    )
