"""Live consoles with the fake driver: `hvmesh console` through the proxy, NATS and the agent,
the token rules, the action log, and a viewer that stops reading."""

from __future__ import annotations

import resource
from typing import Any

import aiohttp
import pytest

from hvmesh.agents.fake.driver import FakeDriver
from hvmesh.core.ops.launcher import make_agent
from hvmesh.core.protocol import consoles as wire
from hvmesh.core.protocol import errors
from hvmesh.core.state import action_log
from tests.console_support import Terminal, console_config, start_proxy
from tests.support import ApiClient, Deployment, boot, make_flavor_image, until


@pytest.fixture
def dep(deployment: Deployment) -> Deployment:
    return deployment


async def _cloud(dep: Deployment, **console: Any) -> tuple[ApiClient, Any, Any]:
    cfg = console_config(dep, console=console)
    await dep.start_core(cfg)
    agent = await dep.start_agent("h1", cfg)
    proxy = await start_proxy(dep, cfg)
    admin = ApiClient(await dep.connect("admin"))
    await make_flavor_image(admin)
    return admin, agent, proxy


async def test_hvmesh_console_types_into_the_guest_and_leaves_with_ctrl_bracket(
    dep: Deployment,
) -> None:
    admin, agent, proxy = await _cloud(dep)
    server = await boot(dep, admin, "vm1")
    term = Terminal(dep, "vm1")
    try:
        at = await term.expect(b"escape character is ^]")
        at = await term.expect(b"fake# ", start=at)
        term.type(b"hello\r")  # raw mode: Enter is a carriage return, as on a real terminal
        at = await term.expect(b"fake: hello: not found", start=at)
        term.type(b"\x1d")
        assert await term.exit_code() == 0
    finally:
        term.close()

    # The session is an instance action: who, when and how long.
    assert dep.store is not None

    async def closed() -> bool:
        actions = await action_log.for_server(dep.store, server.id)  # type: ignore[arg-type]
        return any(a.action == "console" and a.finish_time is not None for a in actions)

    await until(closed, what="the console action to be finished")
    actions = await action_log.for_server(dep.store, server.id)
    console = next(a for a in actions if a.action == "console")
    assert console.user == "admin" and console.message is None
    [event] = console.events
    assert event.event == "console_serial" and event.host == "h1"
    assert event.finish_time is not None and event.finish_time >= event.start_time
    assert event.result == "Success"
    await until(lambda: not agent.consoles.sessions and not proxy.sessions, what="sessions gone")


async def _console(client: ApiClient, server_id: str, protocol: str = "serial") -> dict:
    return (await client("servers.console", {"id": server_id, "protocol": protocol}))["console"]


async def _refused(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_tokens_are_one_time_short_lived_and_bound_to_the_project(dep: Deployment) -> None:
    admin, _, _ = await _cloud(dep)
    server = await boot(dep, admin, "vm1")
    console = await _console(admin, server.id)
    assert console["type"] == "serial" and "token=" in console["url"]
    url = console["websocket_url"]

    # A tampered token: refused, and the real one still works once.
    token = url.rsplit("=", 1)[1]
    tampered = url[: -len(token)] + ("A" if token[0] != "A" else "B") + token[1:]
    assert await _refused(tampered) == 403
    assert await _refused(url) == 101
    assert await _refused(url) == 403  # used

    # Another project's user cannot have a console URL for this server.
    demo = ApiClient(await dep.connect("demo"))
    with pytest.raises(errors.NotFound):
        await _console(demo, server.id)

    # A VNC console on a host whose driver has none: refused before any token.
    with pytest.raises(errors.Conflict, match="supports_vnc_console"):
        await _console(admin, server.id, "vnc")

    # A stopped server has no live console.
    await admin("servers.action", {"id": server.id, "action": "stop"})
    await until(lambda: _stopped(admin, server.id), what="the server to stop")
    with pytest.raises(errors.Conflict, match=r"SHUTOFF|stopped"):
        await _console(admin, server.id)


async def _stopped(admin: ApiClient, server_id: str) -> bool:
    server = (await admin("servers.get", {"id": server_id}))["server"]
    return server["status"] == "SHUTOFF" and server["task_state"] is None


async def test_an_expired_token_is_refused(dep: Deployment) -> None:
    admin, _, _ = await _cloud(dep, token_ttl=0.001)
    server = await boot(dep, admin, "vm1")
    console = await _console(admin, server.id)
    assert await _refused(console["websocket_url"]) == 403


async def test_a_host_without_the_console_capability_is_refused(dep: Deployment) -> None:
    cfg = console_config(dep)
    await dep.start_core(cfg)
    nc = await dep.service_connection()
    dep.connections.append(nc)
    lacking = FakeDriver.lacking("supports_serial_console")
    agent = make_agent(nc, cfg, "fake", "h1")
    agent.driver = lacking("h1", cfg)
    await dep.start(agent)
    admin = ApiClient(await dep.connect("admin"))
    await make_flavor_image(admin)
    server = await boot(dep, admin, "vm1")
    with pytest.raises(errors.Conflict, match="supports_serial_console"):
        await _console(admin, server.id)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_a_viewer_that_stops_reading_is_bounded_then_disconnected(dep: Deployment) -> None:
    """A flood (`yes`) to a viewer that reads nothing: the agent stops reading the console
    once the proxy's window is full, nothing grows, and the session ends after the stall
    timeout. An unbounded bridge would move hundreds of MB in that time."""
    admin, agent, proxy = await _cloud(dep, stall_timeout=3.0)
    server = await boot(dep, admin, "vm1")
    console = await _console(admin, server.id)
    peak_before = _rss_mb()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(console["websocket_url"])
        await ws.send_bytes(b"yes\r")  # and never read again
        await until(lambda: agent.consoles.sessions, what="the agent's session")
        [session] = agent.consoles.sessions.values()
        await until(lambda: session.pipe.waiting_for_credit.is_set(), what="the agent to wait")
        [fake] = [c for c in agent.driver.open_consoles if c.server_id == server.id]
        await until(lambda: not proxy.sessions, timeout=30, what="the stalled session to end")
        await until(lambda: not agent.consoles.sessions, what="the agent's session to end")
        await ws.close()
    reason = session.pipe.close_reason or ""
    assert "took nothing for 3 s" in reason, reason
    # What the console produced is what reached the viewer's socket buffers, plus one
    # window in flight: far below what the flood would have made unchecked.
    bound = wire.WINDOW + 2 * wire.CHUNK
    assert session.pipe.sent <= fake.produced
    assert fake.produced - session.pipe.sent <= 2 * wire.CHUNK
    assert session.pipe.sent < 32 * 2**20, session.pipe.sent  # socket buffers + one window
    assert session.pipe.queued <= bound
    assert _rss_mb() - peak_before < 64
