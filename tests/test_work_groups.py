"""The hosts of one agent process take their work from one consumer per group.

A fleet's host records name their group, the conductor publishes on the group's
subjects, and the group's single durable consumer (no per-host ones) hands each item to
its host; an item for a host of the group that has not started yet waits for it.
"""

from __future__ import annotations

import asyncio

import msgspec

from hvmesh.agents.heartbeats import Heartbeats
from hvmesh.core.ops.launcher import fake_fleet, make_agent
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import encode
from hvmesh.core.protocol.messages import AgentEvent, Work
from tests.support import ApiClient, Deployment, boot, make_flavor_image


async def test_a_fleet_takes_its_work_from_one_consumer(
    deployment: Deployment, admin: ApiClient
) -> None:
    cfg = deployment.config()
    await deployment.start_core(cfg)
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    fleet = fake_fleet(nc, cfg, 3)
    await deployment.start(*fleet)
    store = deployment.store
    assert store is not None
    for agent in fleet:
        record = (await store.hosts.get(agent.host)).value  # type: ignore[union-attr]
        assert record.work_group == "fake-0001", record
    js = nc.jetstream()
    names = {c.name for c in await js.consumers_info(subjects.WORK_STREAM)}
    assert "agents-fake-0001" in names
    assert not any(n.startswith("agent-fake-") for n in names), names

    await make_flavor_image(admin)
    servers = [await boot(deployment, admin, f"vm{i}") for i in range(3)]
    running = {sid for agent in fleet for sid in agent.driver.instances}
    assert {s.id for s in servers} == running
    assert all(s.host in {a.host for a in fleet} for s in servers)


async def test_work_for_a_host_of_the_group_waits_until_it_starts(
    deployment: Deployment,
) -> None:
    cfg = deployment.config()
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    beats = Heartbeats(cfg.compute.heartbeat_interval)
    beats.plan(["wg-1", "wg-2"])
    first = make_agent(nc, cfg, "fake", "wg-1", beats=beats)
    await deployment.start(first)

    events: asyncio.Queue[AgentEvent] = asyncio.Queue()

    async def take(msg: object) -> None:
        await events.put(msgspec.json.decode(msg.data, type=AgentEvent))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.events("wg-2", "*"), cb=take)
    work = Work(kind="destroy", server_id="not-there", host="wg-2")
    await nc.jetstream().publish(subjects.work("wg-2", "wg-1"), encode(work))

    second = make_agent(nc, cfg, "fake", "wg-2", beats=beats)
    await deployment.start(second)
    event = await asyncio.wait_for(events.get(), 30)
    assert (event.kind, event.host, event.server_id) == ("destroy", "wg-2", "not-there")
