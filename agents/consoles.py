"""An agent's live console sessions: opened on the console proxy's request, bridged to NATS.

`hvmesh.agent.<host>.console_open` asks for one session (core/protocol/consoles.py
ConsoleOpen): the agent checks the server is this host's, has its driver open the console
and answers; from then on the guest's bytes go out on the session's console_out subject
and the viewer's come in on its console_in subject, through a ConsolePipe each way with
flow control. The agent reads from the console only while the proxy grants credit, so a
viewer that stops reading leaves the backlog with the hypervisor. A session ends when
either end closes, the console closes, or the proxy goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from hvmesh.agents.driver import ComputeDriver, ConsoleChannel, DriverError
from hvmesh.core import log
from hvmesh.core.bus import micro as bus
from hvmesh.core.bus.console_pipe import ConsolePipe
from hvmesh.core.protocol import consoles as wire
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.actions import CONSOLE_CAPABILITIES
from hvmesh.core.protocol.base import encode
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

#: Console sessions one agent runs at once; more are refused (429).
MAX_SESSIONS = 64


class Agent(Protocol):
    """What console sessions need of the agent runtime."""

    nc: Client
    host: str
    driver: ComputeDriver
    store: Store | None


class Session:
    """One open console: the driver's channel and the pipe to the proxy."""

    def __init__(self, session_id: str, server_id: str, channel: ConsoleChannel, pipe: ConsolePipe):
        self.id = session_id
        self.server_id = server_id
        self.channel = channel
        self.pipe = pipe

    async def run(self) -> None:
        """Bridge both ways until either end closes; then close both."""
        out = asyncio.create_task(self._guest_to_viewer())
        into = asyncio.create_task(self._viewer_to_guest())
        try:
            await asyncio.wait((out, into), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (out, into):
                task.cancel()
            reason = "the console closed" if out.done() and not self.pipe.closed else "closed"
            await self.pipe.close(self.pipe.close_reason or reason)
            with contextlib.suppress(Exception):
                await self.channel.close()

    async def _guest_to_viewer(self) -> None:
        while True:
            data = await self.channel.read()
            if not data or not await self.pipe.send(data):
                return

    async def _viewer_to_guest(self) -> None:
        while True:
            data = await self.pipe.recv()
            if not data:
                return
            await self.channel.write(data)


class ConsoleSessions:
    """The console sessions of one agent runtime."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handlers(self) -> dict[str, Callable[[Msg], Coroutine[Any, Any, None]]]:
        """The requests this answers on the host's subjects (opening a session)."""
        return {subjects.CONSOLE_OPEN: self._open}

    async def _open(self, msg: Msg) -> None:
        nc = self.agent.nc
        try:
            req = msgspec.json.decode(msg.data, type=wire.ConsoleOpen)
        except msgspec.DecodeError as exc:
            await bus.reply_error(nc, msg, 400, f"bad console_open request: {exc}")
            return
        refusal = await self._refusal(req)
        if refusal is not None:
            await bus.reply_error(nc, msg, *refusal)
            return
        try:
            channel = await self.agent.driver.open_console(req.server_id, req.protocol)
        except NotImplementedError:
            capability = CONSOLE_CAPABILITIES[req.protocol]
            message = (
                f"the {self.agent.driver.name} driver has no {req.protocol} console ({capability})"
            )
            await bus.reply_error(nc, msg, 409, message)
            return
        except DriverError as exc:
            await bus.reply_error(nc, msg, 409, str(exc))
            return
        except Exception as exc:
            LOG.exception("agent.console_open_failed", host=self.agent.host, server=req.server_id)
            await bus.reply_error(nc, msg, 500, str(exc))
            return
        pipe = ConsolePipe(
            nc,
            subjects.console_out(self.agent.host, req.session),
            subjects.console_in(self.agent.host, req.session),
            send_window=req.window,
        )
        await pipe.start()
        session = Session(req.session, req.server_id, channel, pipe)
        self.sessions[req.session] = session
        await msg.respond(encode(wire.ConsoleOpened(session=req.session, window=pipe.recv_window)))
        LOG.info(
            "agent.console_opened",
            host=self.agent.host,
            server=req.server_id,
            protocol=req.protocol,
            session=req.session,
        )
        task = asyncio.create_task(self._run(session), name=f"console {req.session}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refusal(self, req: wire.ConsoleOpen) -> tuple[int, str] | None:
        """Why this session may not open here (code, message), or None."""
        if req.session in self.sessions:
            return 409, f"console session {req.session} is already open"
        if len(self.sessions) >= MAX_SESSIONS:
            return 429, f"host {self.agent.host} has {MAX_SESSIONS} console sessions open"
        store = self.agent.store
        entry = await store.servers.get(req.server_id) if store is not None else None
        if entry is None or entry.value.host != self.agent.host:
            return 404, f"server {req.server_id} is not on host {self.agent.host}"
        return None

    async def _run(self, session: Session) -> None:
        try:
            await session.run()
        except Exception:
            LOG.exception("agent.console_failed", host=self.agent.host, session=session.id)
        finally:
            self.sessions.pop(session.id, None)
            LOG.info(
                "agent.console_closed",
                host=self.agent.host,
                server=session.server_id,
                session=session.id,
                reason=session.pipe.close_reason,
                sent=session.pipe.sent,
                received=session.pipe.received,
            )

    async def stop(self) -> None:
        """Close every session (the agent is stopping)."""
        for session in list(self.sessions.values()):
            await session.pipe.close("the host's agent stopped")
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(5):
                    await task
