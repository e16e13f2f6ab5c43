"""Live consoles in a real browser: headless Chromium opens the URLs servers.console gives.

The serial console of a fake-driver server in the proxy's xterm.js page (typing into it,
and a used token's page refused), and the VGA screen of a real QEMU guest under libvirt
in noVNC's vnc_lite.html, through the proxy, NATS and the agent to QEMU's VNC server,
compared with the screen captured straight from that VNC server with vncdotool.

Needs Debian's chromium and chromium-driver, PyPI's selenium (tests/browser.py), and for
the VNC test what tests/setup_libvirt.sh sets up, noVNC and vncdotool; under CI=true a
missing one fails the test (tests/conftest.py). Screenshots go to
$HVMESH_TEST_ARTEFACTS/consoles/ (test-artefacts/ by default).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest

from hvmesh.agents.runtime import AgentRuntime
from hvmesh.core.config import Config
from hvmesh.core.consoles.proxy import ConsoleProxy
from hvmesh.core.ops.launcher import make_agent
from hvmesh.core.protocol import states
from tests.browser import ENTER, Browser, artefact, chromium, unavailable
from tests.console_support import console_config, start_proxy
from tests.support import (
    ApiClient,
    Cli,
    Deployment,
    boot,
    gone,
    make_flavor_image,
    settled,
    until,
    wait_server,
)

PAGE_TIMEOUT = 20.0  # seconds a page has to connect, or to show what was typed
BOOT_TIMEOUT = 120.0  # the real guest's shell prompt: 7-14 s on 2 busy cores
VNCDO = Path(sys.executable).with_name("vncdo")
#: The real guest's kernel command line: the kernel writes on the VGA screen too, /init
#: runs a shell on the serial port and the first virtual terminal (tests/guest/build.sh),
#: and nothing prints afterwards, so the screen holds still while it is compared.
GUEST_CMDLINE = "console=tty0 console=ttyS0 hvmesh.shell=1 hvmesh.heartbeat=0"
GUEST_PROMPT = "guest# "
#: The share of pixels the browser's canvas must have equal to QEMU's own framebuffer
#: (the text cursor blinks: its cell, 0.05 % of a 720x400 text screen, may differ).
MIN_EQUAL = 0.995
COMPARE_ATTEMPTS = 3

# The serial page's terminal text, one line per row (untrimmed, so a prompt's trailing
# space shows).
TERMINAL_TEXT = """(function () {
  var b = window.hvmeshConsole.term.buffer.active, lines = [];
  for (var i = 0; i < b.length; i++) { lines.push(b.getLine(i).translateToString(false)); }
  return lines.join("\\n");
})()"""
SERIAL_STATE = (
    "JSON.stringify({state: window.hvmeshConsole && window.hvmeshConsole.state, "
    f"status: document.getElementById('status').textContent, text: {TERMINAL_TEXT}}})"
)
STATUS = "document.getElementById('status').textContent"  # both pages have one
# noVNC's canvas: its size and how much of it is drawn (non-black pixels, colours).
CANVAS = """(function () {
  var c = document.querySelector('#screen canvas');
  if (!c || !c.width || !c.height) { return null; }
  var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  var lit = 0, colours = new Set();
  for (var i = 0; i < d.length; i += 4) {
    var v = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
    if (v) { lit++; }
    if (colours.size < 256) { colours.add(v); }
  }
  return {width: c.width, height: c.height, lit: lit, colours: colours.size};
})()"""


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"browser: {reason}")
    async with chromium(tmp_path) as opened:
        yield opened


async def _console(client: ApiClient, server_id: str, protocol: str) -> dict[str, Any]:
    return (await client("servers.console", {"id": server_id, "protocol": protocol}))["console"]


# --- the serial console, fake driver ------------------------------------------------------


async def test_serial_console_in_the_browser(deployment: Deployment, browser: Browser) -> None:
    cfg = console_config(deployment)
    await deployment.start_core(cfg)
    agent = await deployment.start_agent("h1", cfg)
    proxy = await start_proxy(deployment, cfg)
    admin = ApiClient(await deployment.connect("admin"))
    await make_flavor_image(admin)
    server = await boot(deployment, admin, "vm1")
    console = await _console(admin, server.id, "serial")
    assert console["type"] == "serial" and console["protocol"] == "serial"
    assert console["url"].startswith(f"{cfg.console.url()}/serial.html?token="), console

    await browser.get(console["url"])
    opened = f"window.hvmeshConsole.state === 'open' && {TERMINAL_TEXT}.indexOf('fake# ') >= 0"
    await browser.wait_for(opened, PAGE_TIMEOUT, "the console and its prompt", SERIAL_STATE)
    assert await browser.js(f"return {STATUS};") == "connected"

    # Typed into xterm.js (its hidden textarea takes the keys), through the proxy to the
    # fake guest, whose answer comes back into the terminal.
    await browser.type(".xterm-helper-textarea", "hello" + ENTER)
    answered = f"{TERMINAL_TEXT}.indexOf('fake: hello: not found') >= 0"
    await browser.wait_for(answered, PAGE_TIMEOUT, "the guest's answer", SERIAL_STATE)
    await browser.screenshot(artefact("consoles", "serial.png"))
    [session] = proxy.sessions.values()
    assert session.from_viewer >= len("hello\r") and session.to_viewer > 0

    # The same URL again: its token is spent, the WebSocket refused, the page closed.
    await browser.get(console["url"])
    closed = "window.hvmeshConsole.state === 'closed'"
    await browser.wait_for(closed, PAGE_TIMEOUT, "the used token's page to close", SERIAL_STATE)
    assert await browser.js("return window.hvmeshConsole.received;") == 0
    status = await browser.js(f"return {STATUS};")
    assert status.startswith("disconnected"), status
    await until(lambda: not proxy.sessions, what="the first session to end")
    await until(lambda: not agent.consoles.sessions, what="the agent's session to end")


# --- the VNC console, a real QEMU guest ---------------------------------------------------


class Compared(NamedTuple):
    size: tuple[int, int]
    direct_size: tuple[int, int]
    equal: float  # share of pixels equal in both
    colours: int  # distinct colours in the browser's canvas
    lit: float  # share of its pixels that are not black


def compare(canvas: Path, direct: Path) -> Compared:
    """The browser's canvas beside QEMU's framebuffer, pixel by pixel."""
    from PIL import Image, ImageChops

    with Image.open(canvas) as a, Image.open(direct) as b:
        seen, truth = a.convert("RGB"), b.convert("RGB")
    pixels = seen.width * seen.height
    colours = len(seen.getcolors(maxcolors=pixels) or [])
    lit = 1.0 - seen.convert("L").histogram()[0] / pixels
    if seen.size != truth.size:
        return Compared(seen.size, truth.size, 0.0, colours, lit)
    equal = ImageChops.difference(seen, truth).convert("L").histogram()[0] / pixels
    return Compared(seen.size, truth.size, equal, colours, lit)


@contextlib.contextmanager
def libvirt_host() -> Iterator[tuple[ModuleType, Path]]:
    """The libvirt peer's helpers and a host directory; skips (fails under CI) when the
    real libvirtd, the test guest, noVNC or vncdotool is missing."""
    libvirt_peer = pytest.importorskip("tests.drivers.libvirt_peer", reason="no libvirt-python")
    reason = libvirt_peer.unavailable()
    if reason is not None:
        pytest.skip(f"libvirt: {reason}")
    if not Path("/usr/share/novnc/vnc_lite.html").exists():
        pytest.skip("no noVNC at /usr/share/novnc: install Debian's novnc (tests/setup.sh)")
    if not VNCDO.exists():
        pytest.skip(f"no vncdotool at {VNCDO}: pip install vncdotool (tests/setup.sh)")
    with libvirt_peer.host_dir() as base:
        yield libvirt_peer, base


def vnc_config(dep: Deployment, libvirt_peer: ModuleType, base: Path, pool: str) -> Config:
    """The end-to-end test's settings (libvirt_peer.libvirt_config), a VNC server per
    guest, and the console proxy on a free port."""
    cfg = console_config(
        dep, compute={"image_cache_dir": str(base / "images")}, conductor={"action_timeout": 240}
    )
    cfg.libvirt = libvirt_peer.libvirt_config(base, pool).libvirt
    cfg.libvirt.vnc_enabled = True
    return cfg


async def upload_guest(cli: Cli, guest: Path) -> None:
    """The test guest's kernel, initramfs and disk as three images, as the end-to-end test
    uploads them; the disk boots with GUEST_CMDLINE."""
    kernel, ramdisk = await asyncio.gather(
        cli.json(
            "image", "create", "guest-kernel", "--file", str(guest / "vmlinuz"),
            "--disk-format", "aki", "--container-format", "aki",
        ),
        cli.json(
            "image", "create", "guest-initrd", "--file", str(guest / "initrd.img"),
            "--disk-format", "ari", "--container-format", "ari",
        ),
    )  # fmt: skip
    disk = await cli.json(
        "image", "create", "guest", "--file", str(guest / "disk.qcow2"),
        "--disk-format", "qcow2",
        "--property", f"kernel_id={kernel['id']}",
        "--property", f"ramdisk_id={ramdisk['id']}",
        "--property", f"os_command_line={GUEST_CMDLINE}",
    )  # fmt: skip
    assert {kernel["status"], ramdisk["status"], disk["status"]} == {"active"}


async def capture_direct(address: tuple[str, int], path: Path) -> None:
    """QEMU's framebuffer straight from its VNC server, as a PNG, with vncdotool. Its own
    process: vncdotool runs a Twisted reactor, which cannot start twice in one process."""
    host, port = address
    proc = await asyncio.create_subprocess_exec(
        str(VNCDO), "--server", f"{host}::{port}", "--nocursor", "--timeout", "20",
        "capture", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0 and path.exists(), f"vncdo capture failed: {out.decode()}"


def vnc_address_of(libvirt_peer: ModuleType, server_id: str) -> tuple[str, int]:
    """Where the running domain's VNC server listens, from its live XML."""
    from hvmesh.agents.libvirt.console import vnc_address

    with libvirt_peer.connection() as conn:
        live = conn.lookupByUUIDString(server_id).XMLDesc(0)
    return vnc_address(live, server_id)


def own_guests_only(agent: AgentRuntime, dep: Deployment) -> None:
    """Show the agent only the domains of this deployment's servers. The system libvirtd
    is shared: other tests' guests run there too, and an agent removes (reconciles away)
    every hvmesh domain no server of its own deployment places on its host."""
    everything = agent.driver.list_instances

    async def own() -> list[str]:
        assert dep.store is not None
        ids = await everything()
        return [i for i in ids if await dep.store.servers.get(i) is not None]

    agent.driver.list_instances = own  # type: ignore[method-assign]


def destroy_domain(libvirt_peer: ModuleType, server_id: str) -> None:
    """The guest gone from libvirtd whatever the test left (a safety net)."""
    import libvirt

    with libvirt_peer.connection() as conn, contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByUUIDString(server_id)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        dom.undefine()


async def test_vnc_console_in_the_browser_shows_the_guests_screen(
    deployment: Deployment, browser: Browser
) -> None:
    with libvirt_host() as (libvirt_peer, base):
        pool = f"hvmesh-vnc-{uuid.uuid4().hex[:8]}"
        server_id = ""
        try:
            cfg = vnc_config(deployment, libvirt_peer, base, pool)
            await deployment.start_core(cfg)
            nc = await deployment.service_connection()
            deployment.connections.append(nc)
            agent = make_agent(nc, cfg, "libvirt", "kvm-vnc")
            own_guests_only(agent, deployment)
            await deployment.start(agent)
            proxy = await start_proxy(deployment, cfg)
            admin = ApiClient(await deployment.connect("admin"))
            await upload_guest(Cli(deployment), libvirt_peer.GUEST)
            await admin("flavors.create", {"name": "tiny", "vcpus": 1, "ram_mb": 192, "disk_gb": 1})
            created = await admin(
                "servers.create", {"name": "guest", "flavor": "tiny", "image": "guest"}
            )
            server_id = created["server"]["id"]
            server = await wait_server(deployment.store, server_id, settled, timeout=BOOT_TIMEOUT)
            assert server is not None and server.vm_state == states.ACTIVE, server and server.fault
            await _see_the_screen(admin, browser, proxy, libvirt_peer, server_id)
            await admin("servers.delete", {"id": server_id})
            assert await wait_server(deployment.store, server_id, gone, timeout=60) is None
        finally:
            if server_id:
                destroy_domain(libvirt_peer, server_id)
            libvirt_peer.drop_pool(pool)


async def _see_the_screen(
    admin: ApiClient,
    browser: Browser,
    proxy: ConsoleProxy,
    libvirt_peer: ModuleType,
    server_id: str,
) -> None:
    # Booted to its shell: nothing prints on the screen after the prompt.
    from tests.test_libvirt_e2e import console_until

    await console_until(admin, server_id, GUEST_PROMPT)
    console = await _console(admin, server_id, "vnc")
    assert console["type"] == "novnc" and console["protocol"] == "vnc", console
    assert "/vnc_lite.html?path=websockify%3Ftoken%3D" in console["url"], console

    # noVNC connects by itself: page -> proxy -> NATS -> agent -> QEMU's VNC server.
    await browser.get(console["url"])
    drawn = f"{STATUS}.indexOf('Connected') === 0 && ({CANVAS} || {{lit: 0}}).lit > 500"
    describe = f"JSON.stringify({{status: {STATUS}, canvas: {CANVAS}}})"
    await browser.wait_for(drawn, PAGE_TIMEOUT, "noVNC to connect and draw the screen", describe)
    await browser.screenshot(artefact("consoles", "vnc.png"))
    [session] = proxy.sessions.values()
    assert session.token.protocol == "vnc" and session.token.server_id == server_id
    assert session.to_viewer > 0 and session.from_viewer > 0  # RFB both ways

    # The canvas against QEMU's own framebuffer. The guest's text cursor blinks, and a
    # late kernel message could scroll the screen: a few tries, each a fresh pair.
    address = vnc_address_of(libvirt_peer, server_id)
    canvas_png, direct_png = (
        artefact("consoles", "vnc-canvas.png"),
        artefact("consoles", "vnc-direct.png"),
    )
    tries: list[Compared] = []
    for _ in range(COMPARE_ATTEMPTS):
        url = await browser.js(
            "return document.querySelector('#screen canvas').toDataURL('image/png');"
        )
        assert url.startswith("data:image/png;base64,"), url[:64]
        canvas_png.write_bytes(base64.b64decode(url.split(",", 1)[1]))
        await capture_direct(address, direct_png)
        tries.append(compare(canvas_png, direct_png))
        if tries[-1].equal >= MIN_EQUAL:
            break
    result = tries[-1]
    print(f"noVNC canvas vs QEMU's framebuffer: {tries}")  # in pytest -s / -rP output
    assert result.size == result.direct_size, tries
    assert result.colours > 1 and result.lit > 0.01, f"the browser's canvas is blank: {tries}"
    assert result.equal >= MIN_EQUAL, f"the canvas differs from QEMU's screen: {tries}"
    status = await browser.js(f"return {STATUS};")
    assert status.startswith("Connected"), status
