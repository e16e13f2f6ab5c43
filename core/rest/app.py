"""The REST service (`hvmesh rest`): an aiohttp app whose only state is its tokens in memory."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.bus.listening import Bound
from hvmesh.core.config import Config
from hvmesh.core.rest import (
    aggregates,
    compute_services,
    compute_versions,
    consoles,
    flavor_specs,
    flavors,
    hypervisors,
    identity,
    keypairs,
    migrations,
    network_quotas,
    networks,
    ports,
    projects,
    quota_sets,
    server_extras,
    server_groups,
    server_metadata,
    servers,
    subnets,
)
from hvmesh.core.rest import images as image_api
from hvmesh.core.rest.errors import request_ids
from hvmesh.core.rest.identity import TOKENS, authenticate
from hvmesh.core.rest.image_files import IMAGE_STORE
from hvmesh.core.rest.pending_networks import PendingNetworks
from hvmesh.core.rest.tokens import Tokens

LOG = log.get_logger(__name__)

MAX_BODY = 1024 * 1024  # bytes a body read whole may hold (image data is streamed)


def make_app(tokens: Tokens) -> web.Application:
    app = web.Application(middlewares=[request_ids, authenticate], client_max_size=MAX_BODY)
    app[TOKENS] = tokens
    for part in (
        identity, projects,  # Keystone
        compute_versions, flavors, flavor_specs, servers, server_metadata, server_extras, consoles, migrations, keypairs,
        hypervisors, compute_services, aggregates, server_groups, quota_sets,  # Nova
        image_api,  # Glance
        networks, subnets, ports, network_quotas,  # Neutron
    ):  # fmt: skip
        app.add_routes(part.routes())
    return app


class RestService:
    """`hvmesh rest`: Keystone v3 tokens and compute v2.1 on [rest] listen:port."""

    def __init__(self, nc: Any, cfg: Config) -> None:
        # Every API request goes out on the connection of its token's user; the service's
        # own connection only reads image bytes the API has let the caller see.
        self.nc = nc
        self.cfg = cfg
        self.tokens = Tokens(cfg.nats, cfg.rest, nc)
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
        # Made here, with [nats] replicas, rather than by the first request to need it.
        await PendingNetworks(self.nc, self.cfg.nats.replicas).ensure()
        app = make_app(self.tokens)
        app[IMAGE_STORE] = self.nc
        self.runner = web.AppRunner(app, access_log=None)
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
