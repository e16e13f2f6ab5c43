"""A host that stops heartbeating is noticed at heartbeat speed: its builds are rescheduled
and its actions' steps fail over at once; guests no server owns are removed by the
agent's periodic reconcile, never one a spawn placed there."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hvmesh.core.conductor.host_monitor import HostMonitor
from hvmesh.core.ops import audit
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Server
from tests.support import (
    ApiClient,
    Deployment,
    act,
    boot,
    make_flavor_image,
    resting,
    settled,
    until,
    wait_server,
)
from tests.test_agent_death import last_action

# Quick heartbeats and a short down time; action_timeout so long that only the host
# monitor can have failed anything over within these tests.
FAST = {
    "DEFAULT": {"service_down_time": 2.0},
    "conductor": {"action_timeout": 600, "host_check_interval": 0.3},
    "compute": {"heartbeat_interval": 0.3},
}


def settings(**more: dict[str, Any]) -> dict[str, dict[str, Any]]:
    merged = {k: dict(v) for k, v in FAST.items()}
    for section, values in more.items():
        merged.setdefault(section, {}).update(values)
    return merged


async def agent_process(deployment: Deployment, host: str, cfg_file: Path) -> Any:
    """`hvmesh agent --driver fake` for `host` as its own process, once it heartbeats."""
    proc = deployment.spawn("agent", "--driver", "fake", "--host", host, cfg_file=cfg_file)
    watcher = await deployment.store.heartbeats.kv.watch(host)
    try:
        async with asyncio.timeout(30):
            async for e in watcher:
                if e is not None and e.value:
                    return proc
    finally:
        await watcher.stop()
    raise AssertionError("watch ended")


def logged(caplog: Any, event: str, server_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == event and getattr(r, "server", "") == server_id
    ]


async def test_build_on_a_killed_agent_is_rescheduled_at_heartbeat_speed(
    deployment: Deployment, admin: ApiClient, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    cfg = deployment.config(**settings())
    await deployment.start_core(cfg)
    steady = await deployment.start_agent("steady", cfg)
    # The host with the most free RAM is picked first; its spawns take ten minutes.
    doomed_file = deployment.config_file(
        "doomed", **settings(fake={"memory_mb": 131072, "spawn_delay": 600})
    )
    doomed = await agent_process(deployment, "doomed", doomed_file)
    await make_flavor_image(admin)

    created = await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    server_id = created["server"]["id"]
    spawning = await wait_server(
        deployment.store,
        server_id,
        lambda s: s is not None and s.task_state == S.SPAWNING and s.host == "doomed",
    )
    assert spawning is not None and spawning.request_id
    doomed.kill()  # kill -9, mid-spawn

    server = await wait_server(deployment.store, server_id, settled, timeout=60)

    assert server is not None and server.vm_state == S.ACTIVE and server.host == "steady"
    assert server.attempt == 1 and server.retry_hosts == ["doomed"]
    assert steady.driver.instances == {server_id: S.RUNNING}
    records = {h.name: h for h in await deployment.store.hosts.values()}
    assert records["doomed"].allocations == {} and records["doomed"].in_progress == []
    assert list(records["steady"].allocations) == [server_id]
    failed_over = logged(caplog, "conductor.build_failed_over", server_id)
    assert [(r.host, r.attempt) for r in failed_over] == [("doomed", 0)]
    assert not logged(caplog, "conductor.spawn_timeout", server_id)
    create = await last_action(deployment, server_id, spawning.request_id)
    assert create.message is None  # the create succeeded, on the second host
    assert [(e.host, e.result) for e in create.events if e.event == "compute_spawn"] == [
        ("steady", "Success")
    ]
    assert await audit.audit(deployment.store) == []


async def test_action_on_a_killed_agent_fails_over_at_heartbeat_speed(
    deployment: Deployment, admin: ApiClient
) -> None:
    cfg = deployment.config(**settings())
    await deployment.start_core(cfg)
    doomed = await agent_process(deployment, "doomed", deployment.config_file("doomed", **FAST))
    await make_flavor_image(admin)
    server = await boot(deployment, admin)
    assert server.host == "doomed"

    doomed.send_signal(signal.SIGSTOP)  # hung: the stop's step waits in its queue
    reply = await act(admin, server.id, "stop")
    await wait_server(
        deployment.store, server.id, lambda s: s is not None and s.task_state == S.POWERING_OFF
    )
    doomed.kill()

    after = await wait_server(deployment.store, server.id, resting(S.ACTIVE), timeout=60)

    assert after is not None and after.host == "doomed" and after.request_id is None
    assert after.fault is not None and "host doomed" in after.fault.message
    action = await last_action(deployment, server.id, reply["request_id"])
    assert action.message == "Error"
    steps = [(e.event, e.result, e.details) for e in action.events if e.result == "Error"]
    assert steps == [("compute_power_off", "Error", "host doomed stopped heartbeating")]
    assert list((await deployment.store.hosts.get("doomed")).value.allocations) == [server.id]


def test_only_a_host_that_just_went_down_is_failed_over() -> None:
    cfg = SimpleNamespace(
        DEFAULT=SimpleNamespace(service_down_time=10.0),
        conductor=SimpleNamespace(action_timeout=100.0),
    )
    ctx: Any = SimpleNamespace(cfg=cfg)
    monitor = HostMonitor(ctx, ctx)
    t = now()
    # "never" has no heartbeat record: it is not followed at all.
    monitor.beats = {"up": t - 1, "just-down": t - 11, "long-gone": t - 500}

    assert monitor.newly_down(t) == ["just-down"]
    assert monitor.newly_down(t + 1) == []  # once per transition
    monitor.beats["just-down"] = t + 2  # back up ...
    assert monitor.newly_down(t + 3) == []
    assert sorted(monitor.newly_down(t + 20)) == ["just-down", "up"]  # ... and down again


# --- guests left behind ------------------------------------------------------------------


async def test_periodic_reconcile_removes_guests_nobody_owns(
    deployment: Deployment, admin: ApiClient
) -> None:
    cfg = deployment.config(compute={"reconcile_interval": 0.2}, fake={"spawn_delay": 600})
    await deployment.start_core(cfg)
    agent = await deployment.start_agent("h1", cfg)
    await make_flavor_image(admin)
    created = await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    server_id = created["server"]["id"]

    def spawning_here(s: Server | None) -> bool:
        return s is not None and s.task_state == S.SPAWNING and s.host == "h1"

    await wait_server(deployment.store, server_id, spawning_here)
    await until(lambda: server_id in agent._users)  # its spawn is under way on the host

    # A guest for no server, and one for the server spawning here, both at once: once the
    # stray one is gone, a reconcile has looked at both.
    agent.driver.instances.update({"stray": S.RUNNING, server_id: S.RUNNING})
    await until(lambda: "stray" not in agent.driver.instances)

    assert agent.driver.instances == {server_id: S.RUNNING}
    entry = await deployment.store.servers.get(server_id)
    assert entry is not None and spawning_here(entry.value)


async def test_delete_whose_host_never_answers_ends_in_error(
    deployment: Deployment, admin: ApiClient
) -> None:
    # The host stays up (service_down_time is long) but its agent is hung: only the
    # delete's own timeout can end it.
    slow = {"conductor": {"action_timeout": 2.0}, "DEFAULT": {"service_down_time": 600.0}}
    await deployment.start_core(deployment.config(**slow))
    hung = await agent_process(deployment, "hung", deployment.config_file("hung", **slow))
    await make_flavor_image(admin)
    server = await boot(deployment, admin)
    hung.send_signal(signal.SIGSTOP)
    try:
        await admin("servers.delete", {"id": server.id})
        after = await wait_server(deployment.store, server.id, resting(S.ERROR), timeout=30)
    finally:
        hung.send_signal(signal.SIGCONT)

    assert after is not None and after.task_state is None and after.request_id is None
    assert after.fault is not None
    assert after.fault.message == "Delete failed: timed out after 2s waiting for host hung"
    assert list((await deployment.store.hosts.get("hung")).value.allocations) == [server.id]
