"""Idle agents wait for work with long pull requests; a nats-server restart must not leave
them waiting out the window (the restarted server forgot the requests it held)."""

from __future__ import annotations

import os

from hvmesh.agents import runtime
from hvmesh.core.ops import natsserver
from tests.support import (
    ApiClient,
    Deployment,
    boot,
    make_flavor_image,
    settled,
    until,
    wait_server,
)


async def test_work_reaches_an_idle_agent_at_once_after_nats_server_restarts(
    deployment: Deployment,
) -> None:
    assert runtime.WORK_FETCH_WINDOW >= 30  # what this test guards: the long window
    cfg = deployment.config()
    await deployment.start_core(cfg)
    agent = await deployment.start_agent("h1", cfg)
    admin = ApiClient(await deployment.connect("admin"))
    await make_flavor_image(admin)
    await boot(deployment, admin, "before")
    assert agent._worker is not None
    before = agent.nc.stats["reconnects"]

    # Restarted with its store: every pull request it held is gone.
    old = deployment.server
    old.kill()
    deployment.server = await natsserver.start(
        deployment.tmp / "nats", port=old.port, leaf_port=old.leaf_port, name=f"test-{os.getpid()}"
    )
    await until(lambda: agent.nc.stats["reconnects"] > before, 30, "the agent to reconnect")
    admin = ApiClient(await deployment.connect("admin"))
    # A build now reaches the agent well inside the fetch window it was waiting out.
    body = {"name": "after", "flavor": "m1.small", "image": "cirros"}
    created = (await admin("servers.create", body))["server"]
    server = await wait_server(
        deployment.store, created["id"], settled, timeout=runtime.WORK_FETCH_WINDOW / 2
    )
    assert server is not None and server.vm_state == "active" and server.host == "h1", server
