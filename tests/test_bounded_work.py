"""Bounded work: a message whose handling keeps failing is retried with backoff, then given up.

Giving up ends the server's work with a fault naming the component and the error, and
keeps the message as a dead letter that `hvmesh manage tasks` lists, shows, retries and
drops.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

import msgspec
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from hvmesh.core.bus.worker import PullWorker, Retry, durable_pull
from hvmesh.core.conductor import build
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.protocol.records import Flavor, Server
from hvmesh.core.state import action_log, dead_letters
from tests.support import (
    ApiClient,
    Cli,
    Deployment,
    drained,
    make_flavor_image,
    settled,
    until,
    wait_server,
)

FAST = {"max_deliveries": 3, "retry_delay": 0.05, "retry_delay_max": 0.2}


async def make_stream(dep: Deployment, name: str) -> Any:
    js = dep.nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=name, subjects=[f"{name.lower()}.>"], retention=RetentionPolicy.WORK_QUEUE
        )
    )
    return js


class Probe:
    """A handler that records each delivery and the nak delay the worker asks for."""

    def __init__(self, naks_first: int = 0) -> None:
        self.naks_first = naks_first  # deliveries answered "not yet" before raising
        self.delivered: list[int] = []
        self.delays: list[float | None] = []
        self.given_up: list[str] = []
        self.done = asyncio.Event()

    async def handle(self, task: Task, msg: Any) -> None:
        self.delivered.append(msg.metadata.num_delivered)
        nak = msg.nak

        async def recording(delay: float | None = None) -> None:
            self.delays.append(delay)
            await nak(delay=delay)

        msg.nak = recording
        if len(self.delivered) <= self.naks_first:
            await msg.nak(delay=0.01)  # not due yet: no fault
            return
        raise RuntimeError("boom")

    async def exhausted(self, task: Task, msg: Any, why: str) -> None:
        self.given_up.append(why)
        self.done.set()


async def test_backoff_grows_and_the_limit_holds(deployment: Deployment) -> None:
    js = await make_stream(deployment, "BOUNDED")
    # A durable made earlier without a delivery limit is brought up to date.
    await js.add_consumer(
        "BOUNDED",
        ConsumerConfig(durable_name="w", ack_policy=AckPolicy.EXPLICIT, filter_subject="bounded.>"),
    )
    retry = Retry(delay=0.05, delay_max=0.2, max_deliveries=5)
    sub = await durable_pull(
        js, "bounded.>", "w", "BOUNDED", 5.0, 16, max_deliver=retry.max_deliver
    )
    assert (await js.consumer_info("BOUNDED", "w")).config.max_deliver == 20
    probe = Probe(naks_first=2)
    keep = functools.partial(dead_letters.keep, js)
    worker = PullWorker(
        "test-worker",
        sub,
        Task,
        probe.handle,
        4,
        retry=retry,
        on_exhausted=probe.exhausted,
        keep=keep,
    )
    worker.start()
    try:
        await js.publish("bounded.x", msgspec.json.encode(Task(kind="build", server_id="s1")))
        await asyncio.wait_for(probe.done.wait(), 30)
        await drained(deployment, "BOUNDED", "w")  # terminated after it was given up
    finally:
        await worker.stop()
    # Two deliberate "not yet" naks, then five faults: the last one is given up.
    assert probe.delivered == [1, 2, 3, 4, 5, 6, 7]
    assert probe.delays == [0.01, 0.01, 0.05, 0.1, 0.2, 0.2]
    assert probe.given_up == ["after 5 deliveries: RuntimeError: boom"]
    assert (await js.stream_info("BOUNDED")).state.messages == 0
    (letter,) = await dead_letters.listing(js, "test-worker")
    assert (letter.subject, letter.stream, letter.sequence) == ("bounded.x", "BOUNDED", 1)
    assert letter.deliveries == 5 and letter.error == "RuntimeError: boom"
    assert letter.data["server_id"] == "s1"


async def test_waiting_past_the_consumers_last_delivery_is_given_up(
    deployment: Deployment,
) -> None:
    js = await make_stream(deployment, "WAITING")
    retry = Retry(delay=0.01, delay_max=0.01, max_deliveries=1)  # the consumer stops at 4
    sub = await durable_pull(
        js, "waiting.>", "w", "WAITING", 5.0, 16, max_deliver=retry.max_deliver
    )
    probe = Probe(naks_first=1000)
    worker = PullWorker(
        "waiter", sub, Task, probe.handle, 1, retry=retry, on_exhausted=probe.exhausted
    )
    worker.start()
    try:
        await js.publish("waiting.x", msgspec.json.encode(Task(kind="build", server_id="s1")))
        await asyncio.wait_for(probe.done.wait(), 30)
        await drained(deployment, "WAITING", "w")
    finally:
        await worker.stop()
    assert probe.delivered == [1, 2, 3, 4]
    assert probe.given_up == ["after 4 deliveries: still waiting"]
    assert (await js.stream_info("WAITING")).state.messages == 0


async def test_a_build_that_keeps_failing_ends_in_error_and_is_kept(
    deployment: Deployment, admin: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise KeyError("x")

    # The scheduler's claim lands, then the conductor fails before the spawn, every time.
    monkeypatch.setattr(build, "start_spawn", broken)
    await deployment.start_core(deployment.config(conductor=FAST), fake_hosts=2)
    await make_flavor_image(admin)
    created = (
        await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    server = await wait_server(deployment.store, created["id"], settled)
    assert server is not None and server.vm_state == "error" and server.host is None
    assert server.fault is not None
    assert server.fault.message == (
        "conductor gave up on task build after 3 deliveries: KeyError: 'x'"
    )
    hosts = await deployment.store.hosts.values()
    assert all(created["id"] not in h.allocations for h in hosts)  # the claim went back

    cli = Cli(deployment)
    (row,) = await cli.json("manage", "tasks", "list", "--component", "conductor-tasks")
    assert row["subject"] == subjects.task("build") and row["deliveries"] == 3
    assert row["error"] == "KeyError: 'x'" and row["component"] == "conductor-tasks"
    shown = await cli.json("manage", "tasks", "show", str(row["id"]))
    assert shown["data"]["server_id"] == created["id"] and shown["stream"] == subjects.TASKS_STREAM
    assert await cli.json("manage", "tasks", "list", "--component", "agent-nowhere") == []

    # Retry publishes the task again (the server is in ERROR now: the build lets it be).
    js = deployment.nc.jetstream()
    before = (await js.stream_info(subjects.TASKS_STREAM)).state.last_seq
    out = await cli.ok("manage", "tasks", "retry", str(row["id"]))
    assert f"published again on {subjects.task('build')}" in out
    assert (await js.stream_info(subjects.TASKS_STREAM)).state.last_seq == before + 1
    await drained(deployment, subjects.TASKS_STREAM, subjects.CONDUCTOR_TASKS_DURABLE)
    assert await cli.json("manage", "tasks", "list") == []
    assert await cli.fails("manage", "tasks", "show", str(row["id"])) == (
        f"error (404): no dead letter {row['id']}"
    )

    # A second one is dropped.
    again = (
        await admin("servers.create", {"name": "vm2", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    await wait_server(deployment.store, again["id"], settled)
    (row,) = await cli.json("manage", "tasks", "list")
    assert "dropped" in await cli.ok("manage", "tasks", "drop", str(row["id"]))
    assert await cli.json("manage", "tasks", "list") == []
    assert "no dead letter" in await cli.fails("manage", "tasks", "drop", str(row["id"]))
    assert "must be a number" in await cli.fails("manage", "tasks", "retry", "x")


async def test_agent_work_that_keeps_failing_is_reported_failed_and_rescheduled(
    deployment: Deployment, admin: ApiClient
) -> None:
    cfg = deployment.config(conductor=FAST)
    await deployment.start_core(cfg)
    flaky_cfg = deployment.config(conductor=FAST, fake={"memory_mb": 131072})  # chosen first
    flaky = await deployment.start_agent("flaky", flaky_cfg)
    await deployment.start_agent("steady", deployment.config(conductor=FAST))

    async def broken(work: Any) -> bool:
        raise ConnectionError("store unreachable")

    flaky.still_wanted = broken
    await make_flavor_image(admin)
    created = (
        await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    server = await wait_server(deployment.store, created["id"], settled)
    assert server is not None and server.vm_state == "active", server
    assert server.host == "steady" and server.retry_hosts == ["flaky"]
    flaky_host = (await deployment.store.hosts.get("flaky")).value
    assert created["id"] not in flaky_host.allocations

    js = deployment.nc.jetstream()
    (letter,) = await dead_letters.listing(js, "agent-flaky")
    assert letter.subject == subjects.work("flaky") and letter.deliveries == 3
    assert letter.error == "ConnectionError: store unreachable"
    raw = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.events("flaky", created["id"]))
    event = msgspec.json.decode(raw.data, type=AgentEvent)
    assert not event.ok and event.kind == "spawn"
    assert event.message == (
        "agent flaky gave up on spawn after 3 deliveries: ConnectionError: store unreachable"
    )


async def test_a_server_whose_build_was_never_queued_ends_in_error(
    deployment: Deployment,
) -> None:
    """An API killed between writing a server and queuing its build leaves it scheduling
    with no build anywhere; the conductor ends it past its limit, as Nova's build timeout
    does, and leaves a server whose task still moves alone."""
    cfg = deployment.config(
        conductor={"stuck_check_interval": 0.2, "scheduler_deadline": 2.0, "action_timeout": 2.0}
    )
    await deployment.start_core(cfg)
    st = deployment.store
    assert st is not None
    flavor = Flavor(id="f1", name="m1.tiny", vcpus=1, ram_mb=64, disk_gb=1)

    def orphan(name: str, updated_at: float) -> Server:
        return Server(
            id=str(uuid.uuid4()), name=name, project="demo", user="demo", flavor=flavor,
            image_id=str(uuid.uuid4()), image_name="cirros", vm_state="building",
            task_state="scheduling", request_id="req-orphan", updated_at=updated_at,
        )  # fmt: skip

    old = orphan("old", now() - 10.0)  # past scheduler_deadline + action_timeout
    fresh = orphan("fresh", now() + 3600.0)  # moving, as far as anyone can tell
    for server in (old, fresh):
        await action_log.start(st, server.id, "req-orphan", "create", "demo", "demo")
        await st.servers.create(server.id, server)

    ended = await wait_server(st, old.id, lambda s: s is not None and s.task_state is None)
    assert ended is not None and ended.vm_state == "error"
    assert ended.fault is not None and ended.fault.message.startswith("stuck in scheduling since")
    assert ended.fault.message.endswith("ended by the conductor")

    async def closed() -> bool:  # the action log is closed just after the record is written
        (action,) = await action_log.for_server(st, old.id)
        return action.finish_time is not None and action.message == "Error"

    await until(closed, what="the create action to be closed with its error")
    still = (await st.servers.get(fresh.id)).value
    assert (still.vm_state, still.task_state) == ("building", "scheduling")


async def test_a_delete_whose_task_was_lost_is_queued_again(deployment: Deployment) -> None:
    """An acknowledged delete whose task never reached a conductor (an API killed after
    writing `deleting`, a publish no stream took) is not dropped as other stuck tasks are:
    the conductor queues its task again and the server goes."""
    cfg = deployment.config(conductor={"stuck_check_interval": 0.2, "action_timeout": 2.0})
    await deployment.start_core(cfg)
    st = deployment.store
    assert st is not None
    flavor = Flavor(id="f1", name="m1.tiny", vcpus=1, ram_mb=64, disk_gb=1)
    server = Server(
        id=str(uuid.uuid4()), name="doomed", project="demo", user="demo", flavor=flavor,
        image_id=str(uuid.uuid4()), image_name="cirros", vm_state="stopped",
        task_state="deleting", request_id="req-lost-delete", updated_at=now() - 10.0,
    )  # fmt: skip
    await action_log.start(st, server.id, "req-lost-delete", "delete", "demo", "demo")
    await st.servers.create(server.id, server)
    assert await wait_server(st, server.id, lambda s: s is None) is None
