"""The REST service (`hvmesh rest`): an aiohttp app whose only state is its tokens in memory."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.rest import compute_versions, flavors, identity, servers
from hvmesh.core.rest.errors import request_ids
from hvmesh.core.rest.identity import TOKENS
from hvmesh.core.rest.tokens import Tokens

LOG = log.get_logger(__name__)

MAX_BODY = 1024 * 1024  # bytes a request body may hold (images are not uploaded here)


class Bound(tuple[str, int]):
    """Where the service listens: (address, port)."""

    @property
    def address(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]


def make_app(tokens: Tokens) -> web.Application:
    app = web.Application(middlewares=[request_ids], client_max_size=MAX_BODY)
    app[TOKENS] = tokens
    app.add_routes(identity.routes())
    app.add_routes(compute_versions.routes())
    app.add_routes(flavors.routes())
    app.add_routes(servers.routes())
    return app


class RestService:
    """`hvmesh rest`: Keystone v3 tokens and compute v2.1 on [rest] listen:port."""

    def __init__(self, nc: Any, cfg: Config) -> None:
        del nc  # every request goes out on the connection of its token's user
        self.cfg = cfg
        self.tokens = Tokens(cfg.nats, cfg.rest)
        self.runner: web.AppRunner | None = None
        self.current: Bound | None = None

    @property
    def auth_url(self) -> str:
        assert self.current is not None
        host = self.current.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.current.port}/identity/v3"

    async def start(self) -> None:
        await self.tokens.start()
        self.runner = web.AppRunner(make_app(self.tokens), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.rest.listen, self.cfg.rest.port)
        await site.start()
        sockets = self.runner.addresses
        port = sockets[0][1] if sockets else self.cfg.rest.port
        self.current = Bound((self.cfg.rest.listen, port))
        LOG.info("rest.started", listen=self.cfg.rest.listen, port=port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.tokens.stop()
