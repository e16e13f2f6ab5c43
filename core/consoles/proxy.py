"""`hvmesh console-proxy`: checks console tokens and bridges each viewer's WebSocket to NATS.

A viewer (noVNC, the serial web terminal, `hvmesh console`) opens a WebSocket on
/websockify?token=... . The proxy spends the token (one use; core/state/console_tokens.py),
asks the server's host's agent to open the console (hvmesh.agent.<host>.console_open),
then carries bytes both ways through a ConsolePipe. It holds at most its window of a
session's bytes: a viewer that stops reading stops the agent's reads, and one that takes
nothing for [console] stall_timeout is disconnected. Each session is recorded in the
server's action log as a "console" action (who, when, how long). The proxy keeps no state
of its own, so several can run behind one address.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from hvmesh.core import log
from hvmesh.core.bus.console_pipe import ConsolePipe
from hvmesh.core.bus.listening import Bound
from hvmesh.core.bus.micro import raise_for_error
from hvmesh.core.config import Config
from hvmesh.core.consoles import pages
from hvmesh.core.protocol import consoles as wire
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.base import encode
from hvmesh.core.state import action_log, console_tokens
from hvmesh.core.state.store import Store
from hvmesh.core.state.tasks import new_request_id

LOG = log.get_logger(__name__)

OPEN_TIMEOUT = 10.0  # seconds the agent has to open a console
MAX_FRAME = 64 * 1024  # the largest WebSocket message a viewer may send
CLOSE_REFUSED = 4409  # WebSocket close code: the host would not open the console
CLOSE_ENDED = 4000  # the session ended on the host's side (the reason says why)
MAX_REASON = 123  # bytes a close frame's reason may hold


class ProxySession:
    """One viewer's console session, as the proxy sees it (for logs and tests)."""

    def __init__(self, session_id: str, token: wire.ConsoleToken, pipe: ConsolePipe) -> None:
        self.id = session_id
        self.token = token
        self.pipe = pipe
        self.started = time.monotonic()
        self.to_viewer = 0  # bytes written to the WebSocket
        self.from_viewer = 0  # bytes read from it
        self.close_reason = ""


class ConsoleProxy:
    """The console proxy on [console] listen:port."""

    def __init__(self, nc: Any, cfg: Config) -> None:
        self.nc = nc
        self.cfg = cfg
        self.store: Store | None = None
        self.runner: web.AppRunner | None = None
        self.current: Bound | None = None
        self.sessions: dict[str, ProxySession] = {}

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_FRAME)
        app.router.add_get("/websockify", self.websocket)
        pages.add_routes(app, self.cfg.console)
        return app

    async def start(self) -> None:
        self.store = await Store(self.nc.jetstream(), replicas=self.cfg.nats.replicas).open()
        self.runner = web.AppRunner(self.make_app(), access_log=None)
        await self.runner.setup()
        c = self.cfg.console
        await web.TCPSite(self.runner, c.listen, c.port).start()
        addresses = self.runner.addresses
        port = addresses[0][1] if addresses else c.port
        self.current = Bound((c.listen, port))
        LOG.info("console_proxy.started", listen=c.listen, port=port, url=c.url())

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            await session.pipe.close("the console proxy stopped")
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- one session ----------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        assert self.store is not None
        token = await console_tokens.spend(self.store, request.query.get("token", ""))
        if token is None:
            LOG.info("console_proxy.refused", peer=request.remote)
            raise web.HTTPForbidden(text="the console token is invalid, used or expired\n")
        session_id = uuid.uuid4().hex
        pipe = ConsolePipe(
            self.nc,
            subjects.console_in(token.host, session_id),
            subjects.console_out(token.host, session_id),
            send_window=wire.CHUNK,  # raised to the agent's window once it answers
        )
        await pipe.start()  # listening before the agent may send
        ws = web.WebSocketResponse(
            protocols=("binary", "base64"), max_msg_size=MAX_FRAME, heartbeat=30.0
        )
        await ws.prepare(request)
        try:
            opened = await self._open(token, session_id)
        except _Refused as exc:  # said in the close frame, which every viewer shows
            LOG.info("console_proxy.unavailable", server=token.server_id, reason=str(exc))
            await pipe.close(str(exc))
            await ws.close(code=CLOSE_REFUSED, message=str(exc).encode()[:MAX_REASON])
            return ws
        pipe.credit = opened.window
        session = ProxySession(session_id, token, pipe)
        self.sessions[session_id] = session
        request_id = new_request_id()
        await self._record_start(token, request_id)
        LOG.info(
            "console_proxy.opened",
            server=token.server_id,
            protocol=token.protocol,
            session=session_id,
            project=token.project,
            user=token.user,
        )
        try:
            await self._bridge(ws, session)
        finally:
            self.sessions.pop(session_id, None)
            await pipe.close(session.close_reason or "the viewer left")
            with contextlib.suppress(Exception):
                reason = session.close_reason.encode()[:MAX_REASON]
                await ws.close(code=CLOSE_ENDED, message=reason)
            await self._record_finish(token, request_id, session)
        return ws

    async def _open(self, token: wire.ConsoleToken, session_id: str) -> wire.ConsoleOpened:
        body = wire.ConsoleOpen(
            session=session_id, server_id=token.server_id, protocol=token.protocol
        )
        try:
            msg = await self.nc.request(
                subjects.agent(token.host, subjects.CONSOLE_OPEN), encode(body), OPEN_TIMEOUT
            )
        except Exception as exc:
            raise _Refused(
                f"the console of server {token.server_id} is unavailable: host {token.host} "
                f"did not answer ({type(exc).__name__})"
            ) from None
        try:
            raise_for_error(msg)
        except errors.HvmeshError as exc:
            raise _Refused(str(exc)) from None
        return msgspec.json.decode(msg.data, type=wire.ConsoleOpened)

    async def _bridge(self, ws: web.WebSocketResponse, session: ProxySession) -> None:
        to_viewer = asyncio.create_task(self._to_viewer(ws, session))
        from_viewer = asyncio.create_task(self._from_viewer(ws, session))
        try:
            await asyncio.wait((to_viewer, from_viewer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_viewer, from_viewer):
                task.cancel()
            for task in (to_viewer, from_viewer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _to_viewer(self, ws: web.WebSocketResponse, session: ProxySession) -> None:
        stall = self.cfg.console.stall_timeout
        while True:
            data = await session.pipe.recv()
            if not data:
                session.close_reason = session.pipe.close_reason or "closed"
                return
            try:
                async with asyncio.timeout(stall):
                    await ws.send_bytes(data)
            except TimeoutError:
                session.close_reason = f"the viewer took nothing for {stall:g} s"
                return
            except ConnectionError:
                session.close_reason = "the viewer left"
                return
            session.to_viewer += len(data)

    async def _from_viewer(self, ws: web.WebSocketResponse, session: ProxySession) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                data = msg.data
            elif msg.type == WSMsgType.TEXT:
                data = msg.data.encode()
            else:
                break
            session.from_viewer += len(data)
            if not await session.pipe.send(data):
                session.close_reason = session.pipe.close_reason or "closed"
                return
        session.close_reason = session.close_reason or "the viewer left"

    # --- the action log -------------------------------------------------------------------

    async def _record_start(self, token: wire.ConsoleToken, request_id: str) -> None:
        assert self.store is not None
        try:
            await action_log.start(
                self.store, token.server_id, request_id, "console", token.project, token.user
            )
            await action_log.step(
                self.store, token.server_id, request_id, f"console_{token.protocol}",
                host=token.host, done=False,
            )  # fmt: skip
        except Exception:
            LOG.exception("console_proxy.action_log_failed", server=token.server_id)

    async def _record_finish(
        self, token: wire.ConsoleToken, request_id: str, session: ProxySession
    ) -> None:
        assert self.store is not None
        seconds = time.monotonic() - session.started
        LOG.info(
            "console_proxy.closed",
            server=token.server_id,
            session=session.id,
            seconds=round(seconds, 1),
            reason=session.close_reason,
            to_viewer=session.to_viewer,
            from_viewer=session.from_viewer,
        )
        try:
            await action_log.step(
                self.store, token.server_id, request_id, f"console_{token.protocol}",
                host=token.host, done=True,
            )  # fmt: skip
            await action_log.finish(self.store, token.server_id, request_id)
        except Exception:
            LOG.exception("console_proxy.action_log_failed", server=token.server_id)


class _Refused(Exception):
    """The agent would not (or could not) open the console; the message says why."""
