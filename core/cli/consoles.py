"""`hvmesh console SERVER` (attach the terminal to the serial console) and `console url`.

Attaching asks the API for a one-time serial console URL (servers.console) and joins the
terminal to the proxy's WebSocket: raw mode when stdin is a terminal, Ctrl-] leaves (as
`virsh console`), and so does the end of stdin. `console url SERVER --type vnc|serial`
(also `console url show`, as the openstack CLI says it) prints the URL for a browser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import termios
import tty
from typing import Any

import aiohttp

from hvmesh.core.cli import output
from hvmesh.core.cli.connect import call
from hvmesh.core.cli.errors import CliError
from hvmesh.core.ops import launcher

ESCAPE = 0x1D  # Ctrl-]
REFUSED = 4409  # the proxy's close code when the host would not open the console
SUBCOMMANDS = ("attach", "url", "log")
# Options before the command word that take a value (main.add_common_options).
VALUED = {"--config", "--context", "--url", "--user", "--password", "--timeout", "-f", "-c"}
VALUED |= {"--format", "--column", "--max-width"}


def with_default_attach(argv: list[str]) -> list[str]:
    """`hvmesh console SERVER` is `hvmesh console attach SERVER`."""
    if "console" not in argv:
        return argv
    i = argv.index("console")
    if any(not w.startswith("-") and argv[j - 1] not in VALUED for j, w in enumerate(argv[:i])):
        return argv  # "console" is not the command word
    rest = argv[i + 1 :]
    words = [w for w in rest if not w.startswith("-")]
    if not words or words[0] in SUBCOMMANDS or "-h" in rest or "--help" in rest:
        return argv
    return [*argv[: i + 1], "attach", *rest]


def console_of(args: argparse.Namespace, protocol: str) -> dict[str, Any]:
    body = {"id": args.server, "protocol": protocol}
    return dict(call(args, "servers", "console", body)["console"])


def cmd_console_url(args: argparse.Namespace) -> None:
    words = args.words[1:] if args.words[0] == "show" and len(args.words) == 2 else args.words
    if len(words) != 1:
        raise CliError(f"console url takes one server, not {' '.join(args.words)!r}")
    args.server = words[0]
    console = console_of(args, args.type)
    output.emit({k: console[k] for k in ("type", "url")}, args.format)


def cmd_console_attach(args: argparse.Namespace) -> None:
    console = console_of(args, "serial")
    code = launcher.run(attach(console["websocket_url"], args.server))
    if code:
        raise CliError(code)


async def attach(url: str, server: str) -> str:
    """Join stdin and stdout to the console at `url` until Ctrl-], EOF or its end.

    Returns "" when the user left, else why the console ended.
    """
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    raw = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if raw else None
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, protocols=("binary",), max_msg_size=1 << 20)
        except aiohttp.WSServerHandshakeError as exc:
            why = "the console token is invalid, used or expired" if exc.status == 403 else ""
            raise CliError(f"the console proxy refused the session ({exc.status}) {why}") from None
        except aiohttp.ClientError as exc:
            where = url.split("?")[0]
            raise CliError(f"cannot reach the console proxy at {where}: {exc}") from None
        print(f"Connected to server {server} (escape character is ^])", file=sys.stderr)
        sys.stderr.flush()
        if raw:
            tty.setraw(stdin)
        try:
            return await _pump(ws, stdin, stdout)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            await ws.close()


async def _pump(ws: aiohttp.ClientWebSocketResponse, stdin: int, stdout: int) -> str:
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(stdin, 4096)
        except OSError:
            data = b""
        keys.put_nowait(data)
        if not data:
            loop.remove_reader(stdin)

    loop.add_reader(stdin, readable)

    async def typed() -> str:
        while True:
            data = await keys.get()
            cut = data.find(bytes([ESCAPE]))
            if cut >= 0:
                data = data[:cut]
            if data:
                await ws.send_bytes(data)
            if cut >= 0 or not data:
                return ""

    async def shown() -> str:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                await loop.run_in_executor(None, _write_all, stdout, msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await loop.run_in_executor(None, _write_all, stdout, msg.data.encode())
            elif msg.type == aiohttp.WSMsgType.CLOSE and msg.data == REFUSED:
                return f"the console is unavailable: {msg.extra}"
            else:
                why = f": {msg.extra}" if msg.type == aiohttp.WSMsgType.CLOSE and msg.extra else ""
                print(f"\r\nthe console closed{why}", file=sys.stderr)
                return ""

    tasks = [asyncio.create_task(typed()), asyncio.create_task(shown())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(stdin)
        for task in tasks:
            task.cancel()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def add_parsers(console: Any, leaf: Any) -> None:
    """`console attach` (also plain `console SERVER`) and `console url` under `console`."""
    p = leaf(
        console, "attach", cmd_console_attach, "attach the terminal to a server's serial console"
    )
    p.add_argument("server", help="id or name")
    p = leaf(console, "url", cmd_console_url, "print a one-time URL to a server's console")
    p.add_argument("words", nargs="+", metavar="SERVER", help="id or name (or: show SERVER)")
    p.add_argument(
        "--type", choices=("vnc", "serial"), default="vnc", help="console type (default: vnc)"
    )
    for flag, kind in (("--novnc", "vnc"), ("--serial", "serial")):
        p.add_argument(
            flag, dest="type", action="store_const", const=kind, help=f"same as --type {kind}"
        )
