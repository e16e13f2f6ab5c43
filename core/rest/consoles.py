"""Nova's remote consoles: POST /servers/{id}/remote-consoles (2.6+) and the older
os-getVNCConsole and os-getSerialConsole actions, answered through servers.console.

hvmesh has VNC (noVNC) and serial consoles; SPICE, RDP and MKS consoles are a 400
naming the protocol, as Nova answers for a console type it does not run.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core.rest.calls import Compute, json_body
from hvmesh.core.rest.errors import RestError

# (protocol, type) Nova's clients ask for -> hvmesh's protocol.
KINDS = {("vnc", "novnc"): "vnc", ("serial", "serial"): "serial"}
# The legacy actions (before 2.6): action name -> (protocol, the type it takes).
ACTIONS = {"os-getVNCConsole": ("vnc", "novnc"), "os-getSerialConsole": ("serial", "serial")}


async def _url(c: Compute, server_id: str, protocol: str, kind: str) -> str:
    ours = KINDS.get((protocol, kind))
    if ours is None:
        raise RestError(400, f"unavailable console type {protocol}/{kind}: hvmesh has "
                             "vnc/novnc and serial/serial consoles")  # fmt: skip
    reply = await c.call("servers", "console", {"id": server_id, "protocol": ours})
    console = reply["console"]
    # Nova hands out the serial console's WebSocket itself; VNC's is the noVNC page.
    return str(console["websocket_url"] if ours == "serial" else console["url"])


async def remote_console(request: web.Request) -> web.Response:
    c = Compute(request)
    if not c.at_least(2, 6):
        raise RestError(404, "remote-consoles needs microversion 2.6 or later")
    body = await json_body(request, "remote_console")
    protocol, kind = body.get("protocol"), body.get("type")
    if not isinstance(protocol, str) or not isinstance(kind, str):
        raise RestError(400, "remote_console needs a protocol and a type")
    url = await _url(c, request.match_info["id"], protocol, kind)
    return c.reply({"remote_console": {"protocol": protocol, "type": kind, "url": url}})


async def legacy_action(
    c: Compute, server_id: str, name: str, args: dict[str, Any]
) -> web.Response:
    """os-getVNCConsole {"type": "novnc"} and os-getSerialConsole {"type": "serial"}."""
    protocol, kind = ACTIONS[name]
    asked = args.get("type")
    if asked != kind:
        raise RestError(400, f"{name}.type: hvmesh has only {kind!r} here, not {asked!r}")
    url = await _url(c, server_id, protocol, kind)
    return c.reply({"console": {"type": kind, "url": url}})


def routes() -> list[web.AbstractRouteDef]:
    return [web.post("/compute/v2.1/servers/{id}/remote-consoles", remote_console)]
