"""A spawn that fails on one host is rescheduled to another; exhausted retries end in ERROR."""

from __future__ import annotations

import json

import msgspec

from hvmesh.core.ops import audit
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server


async def test_failed_spawn_is_rescheduled_elsewhere(
    deployment: Deployment, admin: ApiClient
) -> None:
    await deployment.start_core()
    # The failing host has the most free RAM, so the RAM weigher picks it first.
    await deployment.start_agent(
        "flaky", deployment.config(fake={"fail_rate": 1.0, "memory_mb": 131072})
    )
    await deployment.start_agent("steady", deployment.config(fake={"memory_mb": 65536}))
    await make_flavor_image(admin)

    created = (
        await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    server = await wait_server(deployment.store, created["id"], settled)

    assert server is not None
    assert server.vm_state == "active"
    assert server.host == "steady"
    assert server.retry_hosts == ["flaky"]
    assert server.attempt == 1
    flaky = (await deployment.store.hosts.get("flaky")).value
    steady = (await deployment.store.hosts.get("steady")).value
    assert flaky.allocations == {}
    assert list(steady.allocations) == [created["id"]]
    assert flaky.failed_builds == 1 and steady.failed_builds == 0
    assert flaky.in_progress == [] and steady.in_progress == []
    assert await audit.audit(deployment.store) == []
    # The reschedule claimed the scheduler's alternate directly, without asking it again.
    assert server.alternates == []
    assert await select_requests(admin) == 1

    # BuildFailureWeigher: the next server goes straight to the steady host, no retry.
    again = (
        await admin("servers.create", {"name": "vm2", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    second = await wait_server(deployment.store, again["id"], settled)
    assert second is not None and second.host == "steady" and second.attempt == 0


async def select_requests(admin: ApiClient) -> int:
    """How many hvmesh.sched.select requests the scheduler has answered (its micro stats)."""
    reply = await admin.nc.request("$SRV.STATS.hvmesh-scheduler", b"", timeout=5)
    (select,) = [e for e in json.loads(reply.data)["endpoints"] if e["name"] == "select"]
    return int(select["num_requests"])


async def test_reschedule_asks_the_scheduler_when_the_alternate_is_unusable(
    deployment: Deployment, admin: ApiClient
) -> None:
    # One retry, so the selection carries one alternate: the host with the most RAM after
    # the failing one.
    await deployment.start_core(deployment.config(conductor={"max_attempts": 2}))
    await deployment.start_agent(
        "flaky", deployment.config(fake={"fail_rate": 1.0, "memory_mb": 131072, "spawn_delay": 1.0})
    )
    await deployment.start_agent("alternate", deployment.config(fake={"memory_mb": 65536}))
    await deployment.start_agent("other", deployment.config(fake={"memory_mb": 32768}))
    await make_flavor_image(admin)

    created = (
        await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    spawning = await wait_server(
        deployment.store, created["id"], lambda s: s is not None and s.task_state == "spawning"
    )
    assert spawning is not None and spawning.host == "flaky"
    assert spawning.alternates == ["alternate"]
    # The alternate is disabled while the spawn is still running on the flaky host.
    await deployment.store.hosts.mutate(
        "alternate", lambda h: msgspec.structs.replace(h, status="disabled")
    )

    server = await wait_server(deployment.store, created["id"], settled)
    assert server is not None and server.vm_state == "active"
    assert server.host == "other" and server.retry_hosts == ["flaky"]
    assert await select_requests(admin) == 2
    assert await audit.audit(deployment.store) == []


async def test_build_fails_after_max_attempts(deployment: Deployment, admin: ApiClient) -> None:
    cfg = deployment.config(conductor={"max_attempts": 2})
    await deployment.start_core(cfg)
    failing = deployment.config(fake={"fail_rate": 1.0})
    for name in ("bad-1", "bad-2", "bad-3"):
        await deployment.start_agent(name, failing)
    await make_flavor_image(admin)

    created = (
        await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    server = await wait_server(deployment.store, created["id"], settled)

    assert server is not None and server.vm_state == "error"
    assert len(server.retry_hosts) == 2
    assert server.fault is not None
    assert "Exceeded maximum number of retries" in server.fault.message
    assert "simulated spawn failure" in server.fault.message
    for name in ("bad-1", "bad-2", "bad-3"):
        assert (await deployment.store.hosts.get(name)).value.allocations == {}
    assert await audit.audit(deployment.store) == []
