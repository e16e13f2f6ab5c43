"""Remote consoles through the REST front door: `openstack console url show`, and the
pre-2.6 actions, with the serial URL used at once to reach the guest."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.console_support import console_config, start_proxy
from tests.rest_support import compute_url, openstack, os_env, start_rest, token
from tests.support import ApiClient, Deployment, boot, make_flavor_image


async def _prompt(url: str) -> bytes:
    """What the console at `url` shows first (the fake console's banner and prompt)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        seen = b""
        async with asyncio.timeout(20):
            while b"fake# " not in seen:
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                seen += msg.data
        return seen


async def test_openstack_console_url_show(deployment: Deployment) -> None:
    cfg = console_config(deployment)
    await deployment.start_core(cfg)
    await deployment.start_agent("h1", cfg)
    await start_proxy(deployment, cfg)
    rest = await start_rest(deployment)
    admin = ApiClient(await deployment.connect("admin"))
    demo = ApiClient(await deployment.connect("demo"))
    await make_flavor_image(admin)
    server = await boot(deployment, demo, "vm1")
    env = os_env(rest, deployment)

    shown = await openstack(env, "console", "url", "show", "--serial", "vm1", "-f", "json")
    assert shown["protocol"] == "serial" and shown["type"] == "serial"
    assert shown["url"].startswith(f"ws://127.0.0.1:{cfg.console.port}/websockify?token=")
    assert b"fake console of " + server.id.encode() in await _prompt(shown["url"])

    # No VNC on a fake host: the refusal names the capability. SPICE: hvmesh has none.
    async with aiohttp.ClientSession() as http:
        auth = await token(http, rest, "demo", deployment.server.passwords["demo"], "DEMO")
        url = f"{compute_url(rest)}/servers/{server.id}"
        for version, body, status, text in (
            ("2.6", {"remote_console": {"protocol": "vnc", "type": "novnc"}}, 409,
             "supports_vnc_console"),
            ("2.6", {"remote_console": {"protocol": "spice", "type": "spice-html5"}}, 400,
             "unavailable console type"),
            ("2.5", {"remote_console": {"protocol": "serial", "type": "serial"}}, 404,
             "2.6"),
        ):  # fmt: skip
            headers = {"X-Auth-Token": auth, "OpenStack-API-Version": f"compute {version}"}
            async with http.post(f"{url}/remote-consoles", json=body, headers=headers) as r:
                assert r.status == status, await r.text()
                assert text in await r.text()
        # Before 2.6: the os-getSerialConsole action.
        headers = {"X-Auth-Token": auth, "OpenStack-API-Version": "compute 2.1"}
        body = {"os-getSerialConsole": {"type": "serial"}}
        async with http.post(f"{url}/action", json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            console = (await r.json())["console"]
        assert console["type"] == "serial"
        assert b"fake# " in await _prompt(console["url"])
