"""Live consoles of the libvirt driver against the real libvirtd and QEMU: a shell on the
guest's serial port, the RFB stream of its VNC server, and what is refused.

Needs what tests/setup_libvirt.sh sets up (see tests/drivers/libvirt_peer.py); the guest
boots with hvmesh.shell=1, so its /init runs a shell on the serial port and the first
virtual terminal, and with console=tty0 so the kernel writes to the VGA screen too.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from hvmesh.agents.driver import CONSOLE_CHUNK, ConsoleChannel, DriverError
from tests.drivers.peers import Peer, PeerUnavailable

libvirt = pytest.importorskip("libvirt")

from hvmesh.agents.libvirt.console import vnc_address  # noqa: E402 - needs libvirt
from tests.drivers import libvirt_peer  # noqa: E402 - needs libvirt, checked just above

BOOT_TIMEOUT = 90.0  # the shell's prompt after 7-14 s on 2 busy cores
STEP_TIMEOUT = 20.0
PROMPT = b"guest# "
CMDLINE = "console=tty0 console=ttyS0 hvmesh.shell=1 hvmesh.heartbeat=0"


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    """A libvirt driver on the system libvirtd, its guests destroyed afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            opened = await stack.enter_async_context(libvirt_peer.libvirt_peer(tmp_path))
        except PeerUnavailable as exc:
            pytest.skip(f"libvirt: {exc}")
        yield opened


async def read_until(channel: ConsoleChannel, text: bytes, seen: bytearray) -> None:
    """Read from `channel` into `seen` until `text` is in it; AssertionError with what
    came when the console closes first."""
    while text not in seen:
        data = await channel.read()
        assert data, f"the console closed before {text!r}; it showed {bytes(seen[-2000:])!r}"
        assert len(data) <= CONSOLE_CHUNK
        seen += data


async def read_to_end(channel: ConsoleChannel) -> None:
    """Read until the console says it closed (b"")."""
    while await channel.read():
        pass


class Rfb:
    """Just enough of an RFB 3.8 client to fetch the guest's screen once, raw."""

    def __init__(self, channel: ConsoleChannel) -> None:
        self.channel = channel
        self.buffer = bytearray()

    async def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = await self.channel.read()
            assert data, "the VNC server closed the connection"
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def screen(self) -> tuple[int, int, set[int]]:
        """(width, height, the distinct pixel values) of the whole screen."""
        assert (await self.exactly(12)).startswith(b"RFB 003.")
        await self.channel.write(b"RFB 003.008\n")
        types = await self.exactly((await self.exactly(1))[0])
        assert 1 in types, f"the VNC server asks for authentication: {types!r}"
        await self.channel.write(b"\x01")  # security type None
        assert await self.exactly(4) == b"\0\0\0\0"
        await self.channel.write(b"\x01")  # ClientInit, shared
        width, height = struct.unpack(">HH", await self.exactly(4))
        await self.exactly(16)  # the server's pixel format
        await self.exactly(struct.unpack(">I", await self.exactly(4))[0])  # its name
        # 32 bits per pixel, true colour, 8 bits a channel; raw encoding only.
        pixel = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        await self.channel.write(b"\x00\0\0\0" + pixel)
        await self.channel.write(struct.pack(">BxHi", 2, 1, 0))
        await self.channel.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        colours: set[int] = set()
        covered = 0
        while covered < width * height:
            kind = (await self.exactly(1))[0]
            assert kind == 0, f"RFB message {kind} before the screen update"
            (rects,) = struct.unpack(">xH", await self.exactly(3))
            for _ in range(rects):
                _x, _y, w, h, encoding = struct.unpack(">HHHHi", await self.exactly(12))
                assert encoding == 0, f"rectangle in encoding {encoding}, not raw"
                data = await self.exactly(w * h * 4)
                colours.update(struct.unpack(f"<{w * h}I", data))
                covered += w * h
        return width, height, colours


async def test_serial_and_vnc_consoles_of_a_real_guest(peer: Peer) -> None:
    driver = peer.driver
    assert driver.capabilities["supports_serial_console"]
    assert driver.capabilities["supports_vnc_console"]
    assert peer.image is not None
    image = msgspec.structs.replace(
        peer.image, properties={**peer.image.properties, "os_command_line": CMDLINE}
    )
    server = peer.server("console")
    server.image_properties = dict(image.properties)

    with pytest.raises(DriverError, match="not found"):
        await driver.open_console(str(uuid.uuid4()), "serial")
    with pytest.raises(NotImplementedError, match="telnet"):
        await driver.open_console(server.id, "telnet")

    await driver.spawn(server, image)
    serial = await driver.open_console(server.id, "serial")
    seen = bytearray()
    async with asyncio.timeout(BOOT_TIMEOUT):
        await read_until(serial, PROMPT, seen)
    assert b"HVMESH-GUEST-BOOTED" in seen

    # The shell runs what is typed: its echo shows the expression, its output the value.
    seen.clear()
    async with asyncio.timeout(STEP_TIMEOUT):
        await serial.write(b"echo HV-$((6*7))\n")
        await read_until(serial, b"HV-42", seen)
        await read_until(serial, PROMPT, seen)
    assert b"$((6*7))" in seen

    # The VNC server speaks RFB, and its screen shows the kernel's text.
    vnc = await driver.open_console(server.id, "vnc")
    async with asyncio.timeout(STEP_TIMEOUT):
        width, height, colours = await Rfb(vnc).screen()
    assert width > 0 and height > 0
    assert len(colours) > 1, "the guest's VGA screen is blank"
    await vnc.close()
    await vnc.close()  # closing twice is no error
    assert await vnc.read() == b""

    driver.config.libvirt.vnc_enabled = False
    try:
        with pytest.raises(
            DriverError, match=r"has no VNC console: \[libvirt\] vnc_enabled is off"
        ):
            await driver.open_console(server.id, "vnc")
    finally:
        driver.config.libvirt.vnc_enabled = True

    # A second serial console takes over: the first one ends.
    second = await driver.open_console(server.id, "serial")
    async with asyncio.timeout(STEP_TIMEOUT):
        await read_to_end(serial)
    await serial.close()
    await serial.close()

    # Powered off, the open console ends and no new one opens.
    await driver.power_off(server.id)
    async with asyncio.timeout(STEP_TIMEOUT):
        await read_to_end(second)
    await second.close()
    for protocol in ("serial", "vnc"):
        with pytest.raises(DriverError, match="is not running"):
            await driver.open_console(server.id, protocol)


def test_vnc_address_from_the_live_xml() -> None:
    def graphics(inner: str) -> str:
        return f"<domain><devices>{inner}</devices></domain>"

    live = "<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'/>"
    assert vnc_address(graphics(live), "s1") == ("127.0.0.1", 5901)
    anywhere = "<graphics type='vnc' port='5902' listen='0.0.0.0'/>"
    assert vnc_address(graphics(anywhere), "s1") == ("127.0.0.1", 5902)
    child = "<graphics type='vnc' port='5903'><listen type='address' address='::'/></graphics>"
    assert vnc_address(graphics(child), "s1") == ("::1", 5903)
    with pytest.raises(DriverError, match="server s1 has no VNC console: its domain has no VNC"):
        vnc_address(graphics("<graphics type='spice' port='5900'/>"), "s1")
    with pytest.raises(DriverError, match=r"server s1 has no VNC console: .* no port"):
        vnc_address(graphics("<graphics type='vnc' port='-1' autoport='yes'/>"), "s1")
