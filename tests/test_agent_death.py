"""An agent that dies: actions time out cleanly, builds move on, deletes are done locally,
and the agent, back, drops the work it no longer owes and removes instances not its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hvmesh.core.bus import connection
from hvmesh.core.config import Config
from hvmesh.core.ops import audit
from hvmesh.core.ops.launcher import make_agent
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Server
from hvmesh.core.protocol.subjects import WORK_STREAM
from hvmesh.core.state import liveness
from tests.support import ApiClient, Deployment, boot, drained, gone, make_flavor_image, wait_server

TIMEOUT = 1.5  # [conductor] action_timeout: how long a dead host is waited for


def resting(vm_state: str):  # type: ignore[no-untyped-def]
    def done(s: Server | None) -> bool:
        return s is not None and s.vm_state == vm_state and s.task_state is None

    return done


async def restart(deployment: Deployment, host: str, cfg: Config, instances: dict[str, int]) -> Any:
    """Start `host`'s agent again, its hypervisor still running `instances`."""
    nc = await connection.connect(cfg.nats, f"test-agent-{host}-again")
    deployment.connections.append(nc)
    agent = make_agent(nc, cfg, "fake", host)
    agent.driver.instances.update(instances)
    await deployment.start(agent)  # reconciles before it takes any work
    return agent


async def last_action(
    deployment: Deployment, server_id: str, request_id: str, timeout: float = 30.0
) -> Any:
    """The action's log record once it is finished (it closes just after the server's write)."""
    st = deployment.store
    watcher = await st.server_actions.kv.watch(f"{server_id}.{request_id}")
    try:
        async with asyncio.timeout(timeout):
            async for e in watcher:
                if e is None or not e.value or e.operation is not None:
                    continue
                record = st.server_actions.decode(e.value)
                if record.finish_time is not None:
                    return record
    except TimeoutError:
        raise AssertionError(f"action {request_id} never finished") from None
    finally:
        await watcher.stop()
    raise AssertionError("watch ended")


async def work_done(deployment: Deployment, host: str) -> None:
    """Wait until the host's agent has taken (and acknowledged) all its queued work."""
    await drained(deployment, WORK_STREAM, f"agent-{host}")


async def host_down(deployment: Deployment, host: str, cfg: Config, timeout: float = 30.0) -> None:
    """Wait until the host's last heartbeat is older than service_down_time."""
    async with asyncio.timeout(timeout):
        while True:
            at = await liveness.last_beat(deployment.store, host)
            if at is None or at < now() - cfg.DEFAULT.service_down_time:
                return
            # Staleness is a clock condition: polled, within the timeout.
            await asyncio.sleep(0.1)  # noqa: sleep


@pytest.mark.parametrize(
    ("action", "expected"),
    [("stop", S.ACTIVE), ("pause", S.ACTIVE), ("reboot", S.ERROR)],
)
async def test_action_on_a_dead_host_times_out(
    deployment: Deployment, admin: ApiClient, action: str, expected: str
) -> None:
    cfg = deployment.config(conductor={"action_timeout": TIMEOUT})
    await deployment.start_core(cfg)
    agent = await deployment.start_agent("h1", cfg)
    await make_flavor_image(admin)
    server = await boot(deployment, admin)
    await agent.stop()  # dies: the step waits in its queue

    reply = await admin("servers.action", {"id": server.id, "action": action})
    after = await wait_server(deployment.store, server.id, resting(expected))

    assert after is not None and after.host == "h1" and after.request_id is None
    assert after.fault is not None and "timed out" in after.fault.message
    logged = await last_action(deployment, server.id, reply["request_id"])
    assert logged.message == "Error"
    assert any(e.result == "Error" and "timed out" in e.details for e in logged.events)
    assert list((await deployment.store.hosts.get("h1")).value.allocations) == [server.id]
    assert await audit.audit(deployment.store) == []

    # Back, the agent drops the step nobody waits for any more; the guest runs on.
    back = await restart(deployment, "h1", cfg, dict(agent.driver.instances))
    await work_done(deployment, "h1")
    assert back.driver.instances == {server.id: S.RUNNING}
    if expected == S.ACTIVE:  # and the server takes actions again
        await admin("servers.action", {"id": server.id, "action": "stop"})
        stopped = await wait_server(deployment.store, server.id, resting(S.STOPPED))
        assert stopped is not None and stopped.power_state == S.SHUTDOWN


async def test_build_on_a_dead_host_is_rescheduled(
    deployment: Deployment, admin: ApiClient
) -> None:
    cfg = deployment.config(conductor={"action_timeout": TIMEOUT})
    await deployment.start_core(cfg)
    # The host with the most free RAM is picked first; it dies before the build comes.
    doomed_cfg = deployment.config(
        conductor={"action_timeout": TIMEOUT}, fake={"memory_mb": 131072}
    )
    doomed = await deployment.start_agent("doomed", doomed_cfg)
    steady = await deployment.start_agent("steady", cfg)
    await make_flavor_image(admin)
    await doomed.stop()  # its heartbeat is still recent: the scheduler still takes it

    server = await boot(deployment, admin)

    assert server.host == "steady" and server.retry_hosts == ["doomed"] and server.attempt == 1
    assert steady.driver.instances == {server.id: S.RUNNING}
    records = {h.name: h for h in await deployment.store.hosts.values()}
    assert records["doomed"].allocations == {} and records["doomed"].in_progress == []
    assert list(records["steady"].allocations) == [server.id]
    assert await audit.audit(deployment.store) == []

    # Back, it drops the spawn it was handed (the server went elsewhere), and removes
    # what it runs that is not its own: a copy of that server, and a deleted one's.
    back = await restart(
        deployment, "doomed", doomed_cfg, {server.id: S.RUNNING, "deleted-long-ago": S.SHUTDOWN}
    )
    assert back.driver.instances == {}
    await work_done(deployment, "doomed")
    assert back.driver.instances == {}
    assert steady.driver.instances == {server.id: S.RUNNING}
    assert await audit.audit(deployment.store) == []


async def test_delete_when_the_only_host_is_down(deployment: Deployment, admin: ApiClient) -> None:
    cfg = deployment.config(DEFAULT={"service_down_time": 3.0})
    await deployment.start_core(cfg)
    agent = await deployment.start_agent("h1", cfg)
    await make_flavor_image(admin)
    server = await boot(deployment, admin)
    await agent.stop()
    await host_down(deployment, "h1", cfg)

    await admin("servers.delete", {"id": server.id})
    await wait_server(deployment.store, server.id, gone)

    assert (await deployment.store.hosts.get("h1")).value.allocations == {}
    assert await audit.audit(deployment.store) == []

    # Back, the host removes the instance of the server deleted while it was away.
    back = await restart(deployment, "h1", cfg, dict(agent.driver.instances))
    assert back.driver.instances == {}
    await work_done(deployment, "h1")
    assert await audit.audit(deployment.store) == []
