"""What the console tests share: a console proxy on a free port, and `hvmesh console` driven
through a pseudo-terminal, as an operator's terminal would drive it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import subprocess
from typing import Any

from hvmesh.core import config
from hvmesh.core.consoles.proxy import ConsoleProxy
from hvmesh.core.ops import natsserver
from tests.support import HVMESH, Deployment


def console_config(dep: Deployment, **sections: dict[str, Any]) -> config.Config:
    """Test settings with the console proxy on a free loopback port (the API's URLs name it)."""
    console = {"listen": "127.0.0.1", "port": natsserver.free_port(), **sections.pop("console", {})}
    return dep.config(console=console, **sections)


async def start_proxy(dep: Deployment, cfg: config.Config) -> ConsoleProxy:
    nc = await dep.service_connection()
    dep.connections.append(nc)
    proxy = ConsoleProxy(nc, cfg)
    await dep.start(proxy)
    return proxy


class Terminal:
    """`hvmesh console ARGS...` in its own process, on a pseudo-terminal."""

    def __init__(self, dep: Deployment, *args: str, user: str = "admin") -> None:
        self.master, slave = pty.openpty()
        auth = ["--url", dep.server.address, "--user", user, "--password"]
        auth.append(dep.server.passwords[user])
        self.proc = subprocess.Popen(
            [HVMESH, "console", *args, *auth],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.seen = b""
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.master, self._readable)
        self._eof = False

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the child closed its side
            data = b""
        if not data:
            self._eof = True
            asyncio.get_running_loop().remove_reader(self.master)
        self.seen += data
        self._ready.set()

    async def expect(self, text: bytes, timeout: float = 30.0, start: int = 0) -> int:
        """Wait until `text` shows after offset `start`; the offset just past it."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    at = self.seen.find(text, start)
                    if at >= 0:
                        return at + len(text)
                    if self._eof:
                        raise AssertionError(f"the console ended before {text!r}: {self.seen!r}")
                    self._ready.clear()
                    await self._ready.wait()
        except TimeoutError:
            tail = self.seen[-2000:]
            message = f"no {text!r} within {timeout:g}s; the terminal shows {tail!r}"
            raise AssertionError(message) from None

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    async def exit_code(self, timeout: float = 20.0) -> int:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
