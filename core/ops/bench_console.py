"""`hvmesh bench console`: a keystroke's round trip and bulk throughput through a live console.

It runs its own nats-server, the API, scheduler and conductor in this process, and the
console proxy and one fake host's agent as processes of their own, as a deployment runs
them; boots one server and opens its serial console through the proxy's WebSocket. Then:
- latency: one byte typed, timed until its echo is back, many times over, one at a time:
  viewer -> proxy -> NATS -> agent -> console -> agent -> NATS -> proxy -> viewer;
- throughput: the fake console's `yes` floods the session for a while, and the bytes the
  viewer receives per second are the bridge's bulk rate, the path a VNC framebuffer
  stream takes (flow control included).
With `--vnc SERVER` it measures instead a running deployment's real VNC console: whole
raw screens from the server's VNC server, one after another, through the proxy, and with
`--direct` straight from that VNC server too, for the ratio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client

from hvmesh.core import config
from hvmesh.core.api.service import ApiService
from hvmesh.core.bus import connection
from hvmesh.core.bus import micro as bus
from hvmesh.core.conductor.service import Conductor
from hvmesh.core.ops import natsserver, rfb
from hvmesh.core.ops.bench import stop_processes
from hvmesh.core.protocol import subjects
from hvmesh.core.state.store import Store
from hvmesh.schedulers.service import SchedulerService

HOST = "bench-console-1"
START_TIMEOUT = 120.0


class ConsoleBench(msgspec.Struct, kw_only=True):
    keystrokes: int
    rtt_p50_ms: float
    rtt_p99_ms: float
    rtt_mean_ms: float
    bulk_seconds: float
    bulk_mb: float
    bulk_mb_per_s: float


async def _api(nc: Client, verb: str, body: dict) -> dict:
    resource, action = verb.split(".")
    return dict(await bus.call(nc, subjects.api(resource, action), body, timeout=30))


async def _active(nc: Client, server_id: str) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            server = (await _api(nc, "servers.get", {"id": server_id}))["server"]
            if server["status"] == "ACTIVE":
                return
            if server["status"] == "ERROR":
                raise RuntimeError(f"the bench server failed: {server.get('fault')}")
            await asyncio.sleep(0.2)  # noqa: sleep - polls a server another process builds


async def _ready(nc: Client, url: str, server_id: str) -> str:
    """A console URL once the proxy answers and the agent's host runs the server."""
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            try:
                body = {"id": server_id, "protocol": "serial"}
                console = (await _api(nc, "servers.console", body))["console"]
                async with aiohttp.ClientSession() as http, http.get(url + "/serial.html") as r:
                    if r.status in (200, 503):
                        return str(console["websocket_url"])
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.2)  # noqa: sleep - waits for another process to listen


async def _read_until(ws: aiohttp.ClientWebSocketResponse, marker: bytes) -> int:
    seen = b""
    total = 0
    while marker not in seen:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise RuntimeError(f"the console closed: {msg.extra}")
        total += len(msg.data)
        seen = (seen + msg.data)[-4096:]
    return total


async def measure(ws_url: str, keystrokes: int, seconds: float) -> ConsoleBench:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await _read_until(ws, b"fake# ")
        rtts: list[float] = []
        for i in range(keystrokes):
            key = bytes([ord("a") + i % 26])
            start = time.perf_counter()
            await ws.send_bytes(key)
            await _read_until(ws, key)
            rtts.append((time.perf_counter() - start) * 1000)
        await ws.send_bytes(b"\r")
        await _read_until(ws, b"fake# ")
        await ws.send_bytes(b"yes\r")
        await _read_until(ws, b"y\r\n")
        received = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise RuntimeError(f"the console closed: {msg.extra}")
            received += len(msg.data)
        await ws.send_bytes(b"x")
    rtts.sort()
    return ConsoleBench(
        keystrokes=keystrokes,
        rtt_p50_ms=round(statistics.median(rtts), 3),
        rtt_p99_ms=round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], 3),
        rtt_mean_ms=round(statistics.fmean(rtts), 3),
        bulk_seconds=round(elapsed, 2),
        bulk_mb=round(received / 2**20, 1),
        bulk_mb_per_s=round(received / 2**20 / elapsed, 1),
    )


async def run(keystrokes: int = 2000, seconds: float = 10.0, quiet: bool = False) -> ConsoleBench:
    with tempfile.TemporaryDirectory(prefix="hvmesh-bench-console-") as tmp:
        port = natsserver.free_port()
        server = await natsserver.start(
            Path(tmp) / "nats", port=port, leaf_port=natsserver.free_port(avoid={port})
        )
        proxy_port = natsserver.free_port(avoid={port})
        cfg = config.Config()
        cfg = msgspec.structs.replace(
            cfg,
            nats=msgspec.structs.replace(
                cfg.nats, url=server.address, user="hvmesh", password=server.passwords["service"]
            ),
            DEFAULT=msgspec.structs.replace(cfg.DEFAULT, log_level="warning"),
            compute=msgspec.structs.replace(cfg.compute, image_cache_dir=f"{tmp}/images"),
            console=msgspec.structs.replace(cfg.console, listen="127.0.0.1", port=proxy_port),
        )
        cfg_path = Path(tmp) / "bench.ini"
        config.write(cfg, cfg_path)
        env = {**os.environ, "HVMESH_CONFIG": str(cfg_path)}
        exe = str(Path(sys.executable).parent / "hvmesh")
        procs = [
            subprocess.Popen([exe, "console-proxy"], env=env, stdout=subprocess.DEVNULL),
            subprocess.Popen(
                [exe, "agent", "--driver", "fake", "--host", HOST],
                env=env,
                stdout=subprocess.DEVNULL,
            ),
        ]
        nc = await connection.connect(cfg.nats, "hvmesh-bench-console")
        services: list[Any] = [ApiService(nc, cfg), SchedulerService(nc, cfg), Conductor(nc, cfg)]
        try:
            await Store(nc.jetstream()).open()
            for s in services:
                await s.start()
            flavor = {"name": "bench", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}
            await _api(nc, "flavors.create", flavor)
            await _api(nc, "images.create", {"name": "bench", "disk_format": "raw"})
            if not quiet:
                print("  booting a server on a fake host", file=sys.stderr)
            await _wait_host(nc)
            created = await _api(
                nc, "servers.create", {"name": "console", "flavor": "bench", "image": "bench"}
            )
            server_id = created["server"]["id"]
            await _active(nc, server_id)
            ws_url = await _ready(nc, cfg.console.url(), server_id)
            if not quiet:
                print(f"  {keystrokes} keystrokes, then {seconds:g} s of bulk", file=sys.stderr)
            return await measure(ws_url, keystrokes, seconds)
        finally:
            for s in reversed(services):
                await s.stop()
            stop_processes(procs)
            await nc.close()
            server.stop()


async def _wait_host(nc: Client) -> None:
    """Until the fake host's agent (another process) is up in the API's view."""
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            rows = (await _api(nc, "hypervisors.list", {}))["hypervisors"]
            if any(h["name"] == HOST and h["state"] == "up" for h in rows):
                return
            await asyncio.sleep(0.2)  # noqa: sleep - waits for the agent process to register


class VncBench(msgspec.Struct, kw_only=True):
    width: int
    height: int
    bits_per_pixel: int
    seconds: float
    proxied_frames_per_s: float
    proxied_mb_per_s: float
    direct_frames_per_s: float | None = None
    direct_mb_per_s: float | None = None
    proxied_to_direct: float | None = None


async def vnc(nc: Client, server: str, seconds: float, direct: str | None) -> VncBench:
    """Whole-screen updates of a running server's VNC console through the proxy for
    `seconds`, and with `direct` ("host:port" of its VNC server) straight from it too."""
    body = {"id": server, "protocol": "vnc"}
    console = (await _api(nc, "servers.console", body))["console"]
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(console["websocket_url"], protocols=("binary",)) as ws,
    ):
        proxied = await rfb.screen_rate(rfb.WebSocketTransport(ws), seconds)
    result = VncBench(
        width=proxied.width,
        height=proxied.height,
        bits_per_pixel=proxied.bits_per_pixel,
        seconds=seconds,
        proxied_frames_per_s=proxied.frames_per_s,
        proxied_mb_per_s=proxied.mb_per_s,
    )
    if direct:
        host, _, port = direct.rpartition(":")
        reader, writer = await asyncio.open_connection(host or "127.0.0.1", int(port))
        try:
            straight = await rfb.screen_rate(rfb.TcpTransport(reader, writer), seconds)
        finally:
            writer.close()
        result.direct_frames_per_s = straight.frames_per_s
        result.direct_mb_per_s = straight.mb_per_s
        if straight.frames_per_s:
            result.proxied_to_direct = round(proxied.frames_per_s / straight.frames_per_s, 2)
    return result
