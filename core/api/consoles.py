"""The API's servers.console endpoint: a one-time URL to a server's live console.

The caller must see the server (its project's, or an admin's), the server must be
running on a host whose driver has that console, and then a token bound to the server,
its host, the protocol and the caller's project and user goes into the console_tokens
bucket (core/state/console_tokens.py). The URL points at the console proxy, which spends
the token once (Nova's remote-consoles and console auth).
"""

from __future__ import annotations

from urllib.parse import quote

from hvmesh.core import log
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.sites import SiteEndpoints, own_here
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors, states
from hvmesh.core.protocol.actions import CONSOLE_CAPABILITIES, capability_trait
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.consoles import ConsoleToken, ServerConsole
from hvmesh.core.state import console_tokens

LOG = log.get_logger(__name__)

#: The pages of the proxy each protocol's browser URL opens (core/consoles/pages.py).
PAGES = {"serial": "serial.html", "vnc": "vnc_lite.html"}
WEBSOCKET_PATH = "websockify"


def urls(base: str, protocol: str, token: str) -> tuple[str, str]:
    """(browser URL, WebSocket URL) of a console session for `token` at proxy `base`."""
    ws = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    websocket = f"{ws}/{WEBSOCKET_PATH}?token={token}"
    if protocol == "vnc":  # noVNC reads the WebSocket's path from its own query
        page = f"{base}/{PAGES['vnc']}?path={quote(f'{WEBSOCKET_PATH}?token={token}', safe='')}"
    else:
        page = f"{base}/{PAGES['serial']}?token={token}"
    return page, websocket


class ConsoleEndpoints:
    def __init__(self, api: ApiContext, sites: SiteEndpoints | None = None) -> None:
        self.api = api
        self.sites = sites  # at the core: a site's server's console is the site's to open

    async def server_console(self, caller: Caller, req: ServerConsole) -> dict:
        server = await own_here(self.api.st, self.sites, req.id, caller)
        if server.vm_state != states.ACTIVE or server.host is None:
            raise errors.Conflict(
                f"server {server.id} is {server.vm_state}: its console opens only while it is "
                f"{states.ACTIVE}"
            )
        capability = CONSOLE_CAPABILITIES[req.protocol]
        host = await self.api.st.hosts.get(server.host)
        if host is None or capability_trait(capability) not in host.value.traits:
            driver = host.value.driver if host is not None else "unknown"
            raise errors.Conflict(
                f"host {server.host} (driver {driver}) has no {req.protocol} console: "
                f"it lacks the capability {capability}"
            )
        ttl = self.api.cfg.console.token_ttl
        issued = now()
        record = ConsoleToken(
            server_id=server.id,
            host=server.host,
            protocol=req.protocol,
            project=caller.project,
            user=caller.user,
            issued_at=issued,
            expires_at=issued + ttl,
        )
        token = await console_tokens.issue(self.api.st, record)
        page, websocket = urls(self.api.cfg.console.url(), req.protocol, token)
        LOG.info(
            "api.console_issued", server=server.id, protocol=req.protocol, project=caller.project
        )
        return {
            "console": {
                "protocol": req.protocol,
                "type": "novnc" if req.protocol == "vnc" else "serial",
                "url": page,
                "websocket_url": websocket,
                "expires_at": record.expires_at,
            }
        }
