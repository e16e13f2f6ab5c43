"""A work consumer no host reads any more is emptied into its hosts' queues now and removed.

A host that ran alone (its own consumer) and comes back as one of a fleet's group leaves
its old consumer behind, with the work queued for it while it was away; the conductor's
sweep moves that work to the group's subject, where the host's new agent runs it, and
removes the old consumer, without touching a consumer a host still reads.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.js.errors import NotFoundError

from hvmesh.agents.heartbeats import Heartbeats
from hvmesh.core.conductor.work_consumers import is_stale, sweep
from hvmesh.core.ops.launcher import make_agent
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import encode
from hvmesh.core.protocol.messages import AgentEvent, Work
from tests.support import Deployment


async def test_a_host_now_in_a_group_gets_the_work_its_old_consumer_held(
    deployment: Deployment,
) -> None:
    cfg = deployment.config()
    await deployment.start_core(cfg)
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    js = nc.jetstream()
    store = deployment.store
    assert store is not None

    # wg-b runs alone (its own consumer), and so does wg-c, which stays that way.
    alone = make_agent(nc, cfg, "fake", "wg-b")
    stays = make_agent(nc, cfg, "fake", "wg-c")
    await deployment.start(alone, stays)
    await alone.stop()
    deployment.components.remove(alone)
    assert await js.consumer_info(subjects.WORK_STREAM, "agent-wg-b")
    # Work queued for it while it is away, on its own subject.
    work = Work(kind="destroy", server_id="not-there", host="wg-b")
    await js.publish(subjects.work("wg-b"), encode(work))

    # It comes back as the second host of a group whose first is wg-a.
    beats = Heartbeats(cfg.compute.heartbeat_interval)
    beats.plan(["wg-a", "wg-b"])
    events: asyncio.Queue[AgentEvent] = asyncio.Queue()

    async def take(msg: object) -> None:
        await events.put(msgspec.json.decode(msg.data, type=AgentEvent))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.events("wg-b", "*"), cb=take)
    group = [make_agent(nc, cfg, "fake", h, beats=beats) for h in ("wg-a", "wg-b")]
    await deployment.start(*group)
    record = await store.hosts.get("wg-b")
    assert record is not None and record.value.work_group == "wg-a"
    assert await is_stale(store, "agent-wg-b")
    assert not await is_stale(store, "agent-wg-c")
    assert not await is_stale(store, "agents-wg-a")
    assert events.empty()  # nobody reads the old consumer

    # The first sweep only notes it; the next one, still stale, moves and removes it.
    first = await sweep(js, store, set())
    assert "agent-wg-b" in first.stale and first.moved == 0 and first.removed == []
    second = await sweep(js, store, set(first.stale))
    assert second.removed == ["agent-wg-b"] and second.moved == 1, second
    event = await asyncio.wait_for(events.get(), 30)
    assert (event.kind, event.host, event.server_id) == ("destroy", "wg-b", "not-there")
    try:
        await js.consumer_info(subjects.WORK_STREAM, "agent-wg-b")
        raise AssertionError("the stale consumer is still there")
    except NotFoundError:
        pass
    names = {c.name for c in await js.consumers_info(subjects.WORK_STREAM)}
    assert {"agent-wg-c", "agents-wg-a"} <= names

    # Nothing more to do: a third sweep moves and removes nothing.
    third = await sweep(js, store, set(second.stale))
    assert (third.removed, third.moved, third.stale) == ([], 0, [])
