"""Agents' events are applied only when they fit: from the host in their subject, one the
server expects, for the request they answer, in the state they fit; others are dropped."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from hvmesh.core.ops import audit
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import encode
from hvmesh.core.protocol.messages import AgentEvent
from hvmesh.core.protocol.records import Server
from tests.support import (
    ApiClient,
    Deployment,
    act,
    boot,
    drained,
    gone,
    make_flavor_image,
    resting,
    wait_server,
)


async def forge(deployment: Deployment, subject_host: str, event: AgentEvent) -> None:
    """Publish an event as anyone allowed on the events subjects could, and wait until the
    conductors have taken it."""
    js = deployment.nc.jetstream()
    await js.publish(subjects.events(subject_host, event.server_id), encode(event))
    await drained(deployment, subjects.EVENTS_STREAM, subjects.CONDUCTOR_EVENTS_DURABLE)


def rejections(caplog: pytest.LogCaptureFixture, server_id: str) -> list[str]:
    return [
        str(getattr(r, "why", ""))
        for r in caplog.records
        if r.getMessage() == "conductor.event_rejected" and getattr(r, "server", "") == server_id
    ]


async def current(deployment: Deployment, server_id: str) -> Server:
    entry = await deployment.store.servers.get(server_id)
    assert entry is not None
    return entry.value


@pytest.fixture
async def two_hosts(deployment: Deployment, admin: ApiClient) -> dict[str, Any]:
    await deployment.start_core()
    agents = {h: await deployment.start_agent(h) for h in ("h1", "h2")}
    await make_flavor_image(admin)
    return agents


async def test_forged_destroys_leave_an_active_server_alone(
    deployment: Deployment, admin: ApiClient, two_hosts: dict[str, Any], caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None
    other = "h2" if host == "h1" else "h1"
    forged = [
        (host, AgentEvent(kind="destroy", server_id=server.id, host=host)),  # not deleting
        (other, AgentEvent(kind="destroy", server_id=server.id, host=host)),  # wrong subject
        (other, AgentEvent(kind="destroy", server_id=server.id, host=other)),
    ]
    for subject_host, event in forged:
        await forge(deployment, subject_host, event)

    after = await current(deployment, server.id)
    assert after.vm_state == S.ACTIVE and after.task_state is None and after.host == host
    assert list((await deployment.store.hosts.get(host)).value.allocations) == [server.id]
    assert two_hosts[host].driver.instances == {server.id: S.RUNNING}
    why = rejections(caplog, server.id)
    assert len(why) == 3, why
    assert "not deleting" in why[0] and "subject" in why[1] and "not deleting" in why[2]
    assert await audit.audit(deployment.store) == []


async def test_forged_spawn_from_another_host_is_dropped(
    deployment: Deployment, admin: ApiClient, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    await deployment.start_core()
    agent = await deployment.start_agent("h1")
    await make_flavor_image(admin)
    await agent.stop()  # its heartbeat is recent: it is chosen, and its spawn waits
    created = await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    server_id = created["server"]["id"]
    await wait_server(
        deployment.store, server_id, lambda s: s is not None and s.task_state == S.SPAWNING
    )

    await forge(
        deployment, "intruder", AgentEvent(kind="spawn", server_id=server_id, host="intruder")
    )
    await forge(
        deployment, "h1", AgentEvent(kind="spawn", server_id=server_id, host="h1", attempt=4)
    )

    after = await current(deployment, server_id)
    assert after.vm_state == S.BUILDING and after.task_state == S.SPAWNING
    assert after.host == "h1" and after.attempt == 0 and after.retry_hosts == []
    why = rejections(caplog, server_id)
    assert len(why) == 2 and "spawning on h1, not intruder" in why[0] and "attempt 4" in why[1]


async def test_events_for_a_finished_request_are_dropped(
    deployment: Deployment, admin: ApiClient, two_hosts: dict[str, Any], caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None
    stop = await act(admin, server.id, "stop")
    await wait_server(deployment.store, server.id, resting(S.STOPPED))
    await act(admin, server.id, "start")
    await wait_server(deployment.store, server.id, resting(S.ACTIVE))

    # The stop's step again, from the right host: that request is over.
    late = AgentEvent(
        kind="power_off",
        server_id=server.id,
        host=host,
        action="stop",
        request_id=stop["request_id"],
        power_state=S.SHUTDOWN,
    )
    await forge(deployment, host, late)

    after = await current(deployment, server.id)
    assert after.vm_state == S.ACTIVE and after.power_state == S.RUNNING
    why = rejections(caplog, server.id)
    assert len(why) == 1 and "not the server's current request" in why[0]


async def test_delete_takes_only_its_own_destroy(
    deployment: Deployment, admin: ApiClient, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    cfg = deployment.config()
    await deployment.start_core(cfg)
    agent = await deployment.start_agent("h1", cfg)
    await make_flavor_image(admin)
    server = await boot(deployment, admin)
    await agent.stop()  # still up by its heartbeat: the destroy waits in its queue
    await admin("servers.delete", {"id": server.id})
    deleting = await wait_server(
        deployment.store, server.id, lambda s: s is not None and s.task_state == S.DELETING
    )
    assert deleting is not None and deleting.request_id

    bogus = AgentEvent(kind="destroy", server_id=server.id, host="h1", request_id="req-other")
    await forge(deployment, "h1", bogus)
    stranger = AgentEvent(
        kind="destroy", server_id=server.id, host="h2", request_id=deleting.request_id
    )
    await forge(deployment, "h2", stranger)

    still = await current(deployment, server.id)
    assert still.task_state == S.DELETING
    assert list((await deployment.store.hosts.get("h1")).value.allocations) == [server.id]
    why = rejections(caplog, server.id)
    assert len(why) == 2 and "delete request" in why[0] and "no destroy to host h2" in why[1]

    # The host's own destroy, for this delete, is applied: the server goes.
    back = await deployment.start_agent("h1", cfg)
    back.driver.instances.clear()
    await wait_server(deployment.store, server.id, gone)
    assert (await deployment.store.hosts.get("h1")).value.allocations == {}
    assert await audit.audit(deployment.store) == []


async def test_power_reports_only_from_the_servers_host(
    deployment: Deployment, admin: ApiClient, two_hosts: dict[str, Any], caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    server = await boot(deployment, admin)
    host = server.host
    assert host is not None
    other = "h2" if host == "h1" else "h1"

    report = AgentEvent(kind="power", server_id=server.id, host=other, power_state=S.SHUTDOWN)
    await forge(deployment, other, report)
    assert (await current(deployment, server.id)).vm_state == S.ACTIVE
    why = rejections(caplog, server.id)
    assert len(why) == 1 and f"server's host is {host}" in why[0]

    # The same report from the server's own host is the hypervisor's truth: applied.
    own = AgentEvent(kind="power", server_id=server.id, host=host, power_state=S.SHUTDOWN)
    await forge(deployment, host, own)
    after = await current(deployment, server.id)
    assert after.vm_state == S.STOPPED and after.power_state == S.SHUTDOWN
