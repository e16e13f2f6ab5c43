"""Where the metadata service listens: `hvmesh up` on its --listen address unless told
--metadata-listen; `hvmesh metadata` on [metadata] listen unless told --metadata-listen.

The listening sockets are read from the kernel (/proc/net/tcp, tcp6), so the test sees the
address actually bound, not what was logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
from pathlib import Path

import pytest

from hvmesh.core.ops import natsserver
from tests.support import HVMESH, Deployment

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_on(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                local, state = fields[1], fields[3]
                hex_ip, hex_port = local.split(":")
                if state == LISTEN and int(hex_port, 16) == port:
                    found.add(_address(hex_ip))
    return found


async def read_until(stream: asyncio.StreamReader, marker: str, timeout: float = 60) -> str:
    seen = ""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            line = (await stream.readline()).decode()
            assert line, f"output ended before {marker!r}:\n{seen}"
            seen += line
    return seen


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        return await proc.wait()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], "127.0.0.1"),
        (["--listen", "127.0.0.3"], "127.0.0.3"),
        (["--metadata-listen", "127.0.0.2"], "127.0.0.2"),
    ],
    ids=["default-loopback", "follows-listen", "metadata-listen"],
)
async def test_up_metadata_binds_where_told(
    tmp_path: Path, options: list[str], expected: str
) -> None:
    metadata_port = natsserver.free_port()
    proc = await asyncio.create_subprocess_exec(
        HVMESH, "up", "--fake-hosts", "0", "--data-dir", str(tmp_path / "data"),
        "--nats-port", str(natsserver.free_port()), "--leaf-port", str(natsserver.free_port()),
        "--metadata-port", str(metadata_port), *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = await read_until(proc.stdout, "Stop: Ctrl-C")
        assert f"metadata service at http://{expected}:{metadata_port}, " in banner
        assert listening_on(metadata_port) == {expected}
        assert await stop(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("configured", "options", "expected"),
    [
        ("127.0.0.4", [], "127.0.0.4"),
        ("127.0.0.4", ["--metadata-listen", "127.0.0.2"], "127.0.0.2"),
    ],
    ids=["config-listen", "option-over-config"],
)
async def test_metadata_command_binds_where_told(
    deployment: Deployment, configured: str, options: list[str], expected: str
) -> None:
    port = natsserver.free_port()
    cfg = deployment.config_file("metadata", metadata={"listen": configured, "port": port})
    proc = await asyncio.create_subprocess_exec(
        HVMESH,
        "metadata",
        "--config",
        str(cfg),
        *options,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        logged = await read_until(proc.stderr, '"metadata.started"')
        started = json.loads(logged.splitlines()[-1])
        assert (started["address"], started["port"]) == (expected, port)
        assert listening_on(port) == {expected}
        assert await stop(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
