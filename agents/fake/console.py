"""The fake driver's serial console: a tiny line-editing echo terminal, for tests and benchmarks.

It echoes what is typed, answers Enter with a new line and a prompt, and runs two
commands: `yes` prints "y" lines as fast as they are read (until the next keystroke),
which is how tests and `hvmesh bench console` push a flood through a session; `exit`
closes the console. `produced` counts the bytes it handed out, so a test can see that a
viewer that stops reading stops the flood.
"""

from __future__ import annotations

import asyncio

from hvmesh.agents.driver import CONSOLE_CHUNK

PROMPT = b"fake# "
FLOOD = b"y\r\n" * (CONSOLE_CHUNK // 3)


class FakeConsole:
    """One open serial console of a fake instance."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.produced = 0
        self._out = bytearray(b"fake console of " + server_id.encode() + b"\r\n" + PROMPT)
        self._line = bytearray()
        self._flooding = False
        self._closing = False
        self._closed = False
        self._ready = asyncio.Event()
        self._ready.set()

    async def read(self) -> bytes:
        while True:
            if self._closed:
                return b""
            if self._out:
                chunk = bytes(self._out[:CONSOLE_CHUNK])
                del self._out[:CONSOLE_CHUNK]
                self.produced += len(chunk)
                if self._closing and not self._out:
                    self._closed = True
                return chunk
            if self._flooding:
                self.produced += len(FLOOD)
                await asyncio.sleep(0)  # a busy guest still lets the agent's loop run
                return FLOOD
            self._ready.clear()
            await self._ready.wait()

    async def write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._flooding:  # any key stops `yes`
            self._flooding = False
            self._out += b"^C\r\n" + PROMPT
        for byte in data:
            if byte in (0x0D, 0x0A):
                self._out += b"\r\n"
                self._command(bytes(self._line).strip())
                self._line.clear()
            elif byte in (0x7F, 0x08):
                if self._line:
                    self._line.pop()
                    self._out += b"\b \b"
            else:
                self._line.append(byte)
                self._out.append(byte)
        self._ready.set()

    def _command(self, line: bytes) -> None:
        if line == b"yes":
            self._flooding = True
            return
        if line == b"exit":
            self._out += b"logout\r\n"
            self._closing = True
            return
        if line:
            self._out += b"fake: " + line + b": not found\r\n"
        self._out += PROMPT

    async def close(self) -> None:
        self._closed = True
        self._ready.set()
