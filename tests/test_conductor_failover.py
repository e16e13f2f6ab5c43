"""A conductor killed mid-build: another conductor finishes the build."""

from __future__ import annotations

import asyncio
import signal

from nats.js.errors import NotFoundError

from hvmesh.core.api.service import ApiService
from hvmesh.core.ops import audit
from hvmesh.schedulers.service import SchedulerService
from tests.support import (
    ApiClient,
    Deployment,
    make_flavor_image,
    settled,
    wait_for_services,
    wait_server,
)


def spawning(s) -> bool:  # type: ignore[no-untyped-def]
    return s is not None and s.task_state == "spawning"


async def test_conductor_killed_while_the_agent_spawns(
    deployment: Deployment, admin: ApiClient
) -> None:
    """The first conductor hands the spawn over and dies; the second applies its outcome."""
    cfg = deployment.config(fake={"spawn_delay": 2.0})
    cfg_file = deployment.config_file("conductor", fake={"spawn_delay": 2.0})
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    await deployment.start(ApiService(nc, cfg), SchedulerService(nc, cfg))
    await deployment.start_agent("slow", cfg)
    await make_flavor_image(admin)

    first = deployment.spawn("conductor", cfg_file=cfg_file)
    created = (
        await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    await wait_server(deployment.store, created["id"], spawning)
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    deployment.spawn("conductor", cfg_file=cfg_file)
    server = await wait_server(deployment.store, created["id"], settled, timeout=60)
    assert server is not None and server.vm_state == "active" and server.host == "slow"
    assert await audit.audit(deployment.store) == []


async def test_conductor_killed_holding_a_task(deployment: Deployment, admin: ApiClient) -> None:
    """The first conductor takes the build task but cannot finish it (no scheduler yet) and
    dies holding it; the second conductor takes the task over and finishes the build."""
    cfg = deployment.config()
    cfg_file = deployment.config_file("conductor", conductor={"task_ack_wait": 2})

    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    await deployment.start(ApiService(nc, cfg))
    await deployment.start_agent("h1", cfg)
    await make_flavor_image(admin)

    first = deployment.spawn("conductor", cfg_file=cfg_file)
    created = (
        await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    js = admin.nc.jetstream()
    await wait_for_delivery(js)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert (await deployment.store.servers.get(created["id"])).value.task_state == "scheduling"

    await deployment.start(SchedulerService(nc, cfg))
    await wait_for_services(admin.nc, "hvmesh-scheduler", 1)
    deployment.spawn("conductor", cfg_file=cfg_file)
    server = await wait_server(deployment.store, created["id"], settled, timeout=60)
    assert server is not None and server.vm_state == "active" and server.host == "h1"
    assert await audit.audit(deployment.store) == []


async def wait_for_delivery(js, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the conductor's durable consumer has handed out the build task."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                info = await js.consumer_info("HVMESH_TASKS", "conductor")
            except NotFoundError:
                info = None
            if info is not None and info.delivered.stream_seq >= 1:
                return
            await asyncio.sleep(0.05)  # noqa: sleep - consumer state has no event to wait on
