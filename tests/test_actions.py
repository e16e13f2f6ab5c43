"""Server actions end to end through the API on fake hosts: the one-step actions, the state
machine's refusals, failures, lock, reset-state, console log, deletes mid-build and
mid-action, the instance action log and the versioned notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from hvmesh.core.bus import notify
from hvmesh.core.ops import audit
from hvmesh.core.protocol import errors
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.records import Server
from tests.support import (
    ApiClient,
    Deployment,
    act,
    actions_finished,
    boot,
    gone,
    idle,
    make_flavor_image,
    settled,
    wait_all,
    wait_server,
)


async def do(
    cloud: Deployment, client: ApiClient, server_id: str, action: str, **body: Any
) -> Server:
    """Run an action to its end; the record as it rests afterwards."""
    reply = await act(client, server_id, action, **body)
    assert reply["request_id"].startswith("req-")
    s = await wait_server(cloud.store, server_id, idle)
    assert s is not None
    return s


async def claims(cloud: Deployment) -> dict[str, dict[str, dict[str, int]]]:
    assert cloud.store is not None
    return {h.name: h.allocations for h in await cloud.store.hosts.values()}


async def record(cloud: Deployment, server_id: str) -> tuple[int, Server]:
    entry = await cloud.store.servers.get(server_id)
    assert entry is not None
    return entry.revision, entry.value


async def status(client: ApiClient, server_id: str) -> str:
    return (await client("servers.get", {"id": server_id}))["server"]["status"]


async def clean(cloud: Deployment) -> None:
    assert await audit.audit(cloud.store) == []


@contextlib.asynccontextmanager
async def notifications(dep: Deployment) -> AsyncIterator[asyncio.Queue[notify.Notification]]:
    nc = await dep.connect("admin")
    queue: asyncio.Queue[notify.Notification] = asyncio.Queue()

    async def on(msg: Any) -> None:
        queue.put_nowait(notify.decode(msg.data))

    sub = await nc.subscribe("hvmesh.notify.>", cb=on)
    await nc.flush()
    try:
        yield queue
    finally:
        await sub.unsubscribe()


async def until(
    queue: asyncio.Queue[notify.Notification], server_id: str, event_type: str
) -> list[notify.Notification]:
    """Notifications about `server_id` up to and including the first `event_type`."""
    seen: list[notify.Notification] = []
    try:
        async with asyncio.timeout(30):
            while True:
                note = await queue.get()
                if note.payload.id != server_id:
                    continue
                seen.append(note)
                if note.event_type == event_type:
                    return seen
    except TimeoutError:
        raise AssertionError(f"no {event_type}; saw {[n.event_type for n in seen]}") from None


# --- the one-step actions ---------------------------------------------------------------------


async def test_one_step_actions_happy_path(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    s = await boot(cloud, admin)
    before = await claims(cloud)
    host = s.host

    steps = [
        ("stop", {}, S.STOPPED, S.SHUTDOWN, "SHUTOFF"),
        ("start", {}, S.ACTIVE, S.RUNNING, "ACTIVE"),
        ("pause", {}, S.PAUSED, S.POWER_PAUSED, "PAUSED"),
        ("unpause", {}, S.ACTIVE, S.RUNNING, "ACTIVE"),
        ("suspend", {}, S.SUSPENDED, S.POWER_SUSPENDED, "SUSPENDED"),
        ("resume", {}, S.ACTIVE, S.RUNNING, "ACTIVE"),
        ("reboot", {}, S.ACTIVE, S.RUNNING, "ACTIVE"),
        ("reboot", {"type": "HARD"}, S.ACTIVE, S.RUNNING, "ACTIVE"),
        ("stop", {}, S.STOPPED, S.SHUTDOWN, "SHUTOFF"),
        ("reboot", {"type": "HARD"}, S.ACTIVE, S.RUNNING, "ACTIVE"),  # hard: also from stopped
    ]
    for action, body, vm_state, power, shown in steps:
        reply = await act(admin, s.id, action, **body)
        assert reply["server"]["task_state"] is not None, action  # accepted, running
        done = await wait_server(cloud.store, s.id, idle)
        assert done is not None
        assert (done.vm_state, done.power_state) == (vm_state, power), (action, done)
        assert done.fault is None and done.request_id is None and done.host == host
        assert await status(admin, s.id) == shown, action
        assert await claims(cloud) == before, action
    await clean(cloud)


async def test_the_status_while_an_action_runs(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(fake={"step_delay": 1.0}), fake_hosts=1)
    await make_flavor_image(admin)
    s = await boot(deployment, admin)
    reply = await act(admin, s.id, "reboot", type="HARD")
    assert reply["server"]["status"] == "HARD_REBOOT"
    assert reply["server"]["task_state"] == S.REBOOTING_HARD
    await wait_server(deployment.store, s.id, idle)
    reply = await act(admin, s.id, "stop")
    assert reply["server"]["status"] == "ACTIVE"  # powering-off keeps the vm_state's status
    assert reply["server"]["task_state"] == S.POWERING_OFF
    await wait_server(deployment.store, s.id, idle)
    await clean(deployment)


async def test_refused_actions_name_the_state_and_change_nothing(
    cloud: Deployment, admin: ApiClient
) -> None:
    await make_flavor_image(admin)
    await admin("images.create", {"name": "cirros2", "disk_format": "qcow2"})
    s = await boot(cloud, admin)

    refusals: dict[str, list[tuple[str, dict[str, Any]]]] = {
        S.ACTIVE: [("start", {}), ("unpause", {}), ("resume", {})],
        S.STOPPED: [
            ("stop", {}),
            ("reboot", {}),  # a soft reboot needs a running guest
            ("pause", {}),
            ("suspend", {}),
            ("unpause", {}),
            ("resume", {}),
        ],
        S.PAUSED: [("pause", {}), ("suspend", {}), ("stop", {}), ("start", {}), ("reboot", {})],
        S.SUSPENDED: [
            ("suspend", {}),
            ("pause", {}),
            ("unpause", {}),
            ("rebuild", {"image": "cirros2"}),
        ],
    }
    into = {S.ACTIVE: None, S.STOPPED: "stop", S.PAUSED: "pause", S.SUSPENDED: "suspend"}
    back = {S.ACTIVE: None, S.STOPPED: "start", S.PAUSED: "unpause", S.SUSPENDED: "resume"}
    for vm_state, refused in refusals.items():
        if into[vm_state]:
            assert (await do(cloud, admin, s.id, into[vm_state])).vm_state == vm_state
        await actions_finished(cloud, s.id)
        revision, before = await record(cloud, s.id)
        log_before = (await admin("servers.events.list", {"id": s.id}))["instance_actions"]
        held = await claims(cloud)
        for action, body in refused:
            with pytest.raises(errors.Conflict) as refusal:
                await act(admin, s.id, action, **body)
            assert f"while it is in vm_state {vm_state}" in refusal.value.message, action
            assert f"'{action}'" in refusal.value.message
        assert await record(cloud, s.id) == (revision, before)
        assert (await admin("servers.events.list", {"id": s.id}))["instance_actions"] == log_before
        assert await claims(cloud) == held
        if back[vm_state]:
            assert (await do(cloud, admin, s.id, back[vm_state])).vm_state == S.ACTIVE

    # Moves and shelving are refused by the same table.
    await do(cloud, admin, s.id, "pause")
    revision, before = await record(cloud, s.id)
    for action, body in [
        ("resize", {"flavor": "m1.small"}),
        ("migrate", {}),
        ("evacuate", {}),
        ("confirm-resize", {}),
        ("revert-resize", {}),
        ("shelve-offload", {}),
        ("unshelve", {}),
    ]:
        with pytest.raises(errors.Conflict, match="vm_state paused"):
            await act(admin, s.id, action, **body)
    assert await record(cloud, s.id) == (revision, before)
    await do(cloud, admin, s.id, "unpause")
    await clean(cloud)


async def test_a_second_action_while_one_runs_is_refused(
    deployment: Deployment, admin: ApiClient
) -> None:
    await deployment.start_core(deployment.config(fake={"step_delay": 1.0}), fake_hosts=1)
    await make_flavor_image(admin)
    s = await boot(deployment, admin)
    await act(admin, s.id, "stop")
    revision, before = await record(deployment, s.id)
    assert before.task_state == S.POWERING_OFF
    for action, body in [("start", {}), ("stop", {}), ("reboot", {}), ("pause", {})]:
        with pytest.raises(errors.Conflict) as refusal:
            await act(admin, s.id, action, **body)
        # stop is allowed from ACTIVE, so what refuses it is the task.
        if action in ("stop", "pause", "reboot"):
            assert "task_state powering-off" in refusal.value.message, refusal.value.message
        else:
            assert "vm_state active" in refusal.value.message
    assert await record(deployment, s.id) == (revision, before)
    done = await wait_server(deployment.store, s.id, idle)
    assert done is not None and done.vm_state == S.STOPPED
    # A hard reboot may interrupt a soft one (Nova's rule).
    await do(deployment, admin, s.id, "start")
    await act(admin, s.id, "reboot")
    with pytest.raises(errors.Conflict, match="task_state rebooting"):
        await act(admin, s.id, "stop")
    hard = await act(admin, s.id, "reboot", type="HARD")
    assert hard["server"]["task_state"] == S.REBOOTING_HARD
    done = await wait_server(deployment.store, s.id, idle)
    assert done is not None and done.vm_state == S.ACTIVE
    await clean(deployment)


async def test_a_failed_reboot_is_error_as_nova(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(fake={"fail_steps": ["reboot"]}), fake_hosts=1)
    await make_flavor_image(admin)
    s = await boot(deployment, admin)
    held = await claims(deployment)
    async with notifications(deployment) as queue:
        reply = await act(admin, s.id, "reboot")
        seen = await until(queue, s.id, "instance.reboot.error")
    done = await wait_server(deployment.store, s.id, idle)
    assert done is not None and done.vm_state == S.ERROR
    assert done.fault is not None and "simulated reboot failure" in done.fault.message
    shown = (await admin("servers.get", {"id": s.id}))["server"]
    assert shown["status"] == "ERROR" and "reboot failed" in shown["fault"]["message"]
    assert seen[-1].error and "reboot failed" in seen[-1].error
    assert await claims(deployment) == held  # an ERROR server keeps its claim
    action = (await admin("servers.events.get", {"id": s.id, "request_id": reply["request_id"]}))[
        "instance_action"
    ]
    assert action["message"] == "Error"
    results = {e["event"]: e["result"] for e in action["events"]}
    assert results == {"conductor_reboot": "Success", "compute_reboot": "Error"}
    # From ERROR, a hard reboot is allowed (and fails again here); a stop is too.
    await act(admin, s.id, "reboot", type="HARD")
    assert (await wait_server(deployment.store, s.id, idle)).vm_state == S.ERROR
    assert (await do(deployment, admin, s.id, "stop")).vm_state == S.STOPPED
    await clean(deployment)


async def test_a_failed_stop_leaves_it_active(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(fake={"fail_steps": ["power_off"]}), fake_hosts=1)
    await make_flavor_image(admin)
    s = await boot(deployment, admin)
    held = await claims(deployment)
    reply = await act(admin, s.id, "stop")
    done = await wait_server(deployment.store, s.id, idle)
    assert done is not None
    assert (done.vm_state, done.task_state, done.power_state) == (S.ACTIVE, None, S.RUNNING)
    assert done.fault is not None and "simulated power_off failure" in done.fault.message
    shown = (await admin("servers.get", {"id": s.id}))["server"]
    assert shown["status"] == "ACTIVE" and "stop failed" in shown["fault"]["message"]
    assert await claims(deployment) == held
    actions = (await admin("servers.events.list", {"id": s.id}))["instance_actions"]
    assert [a["action"] for a in actions] == ["stop", "create"]
    assert actions[0]["message"] == "Error" and actions[0]["request_id"] == reply["request_id"]
    events = (await admin("servers.events.get", {"id": s.id, "request_id": reply["request_id"]}))[
        "instance_action"
    ]["events"]
    failed = [e for e in events if e["event"] == "compute_power_off"]
    assert len(failed) == 1 and failed[0]["result"] == "Error"
    assert "simulated power_off failure" in failed[0]["details"]
    # The next action that works clears the fault.
    assert (await do(deployment, admin, s.id, "pause")).fault is None
    await clean(deployment)


async def test_an_action_times_out_when_the_host_never_answers(
    deployment: Deployment, admin: ApiClient
) -> None:
    cfg = deployment.config(conductor={"action_timeout": 1.0})
    await deployment.start_core(cfg)
    agent = await deployment.start_agent("fake-1", cfg)
    await make_flavor_image(admin)
    s = await boot(deployment, admin)
    await agent.stop()  # the host stops taking work (its heartbeat is still fresh)
    deployment.components.remove(agent)
    reply = await act(admin, s.id, "pause")
    done = await wait_server(deployment.store, s.id, idle)
    assert done is not None
    assert (done.vm_state, done.task_state) == (S.ACTIVE, None)
    assert done.fault is not None and "timed out" in done.fault.message
    action = (await admin("servers.events.get", {"id": s.id, "request_id": reply["request_id"]}))[
        "instance_action"
    ]
    assert action["message"] == "Error"
    assert [e["result"] for e in action["events"] if e["event"] == "compute_pause"] == ["Error"]
    await clean(deployment)


# --- rebuild ------------------------------------------------------------------------------------


async def test_rebuild_with_a_new_image(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    other = (await admin("images.create", {"name": "ubuntu", "disk_format": "qcow2"}))["image"]
    s = await boot(cloud, admin)
    held = await claims(cloud)

    rebuilt = await do(cloud, admin, s.id, "rebuild", image="ubuntu")
    assert (rebuilt.image_id, rebuilt.image_name) == (other["id"], "ubuntu")
    assert (rebuilt.vm_state, rebuilt.power_state, rebuilt.host) == (S.ACTIVE, S.RUNNING, s.host)
    shown = (await admin("servers.get", {"id": s.id}))["server"]
    assert shown["image"] == {"id": other["id"], "name": "ubuntu"} and shown["status"] == "ACTIVE"
    console = (await act(admin, s.id, "console-log"))["output"]
    assert "booting ubuntu" in console and "booting cirros" not in console

    await do(cloud, admin, s.id, "stop")
    again = await do(cloud, admin, s.id, "rebuild", image="cirros")
    assert again.image_name == "cirros"
    assert (again.vm_state, again.power_state) == (S.STOPPED, S.SHUTDOWN)  # stays stopped
    assert await status(admin, s.id) == "SHUTOFF"
    assert await claims(cloud) == held

    with pytest.raises(errors.BadRequest, match="no-such-image not found"):
        await act(admin, s.id, "rebuild", image="no-such-image")
    await admin("images.create", {"name": "huge", "disk_format": "qcow2", "min_disk_gb": 100})
    revision, before = await record(cloud, s.id)
    with pytest.raises(errors.BadRequest):
        await act(admin, s.id, "rebuild", image="huge")  # needs more disk than the flavor
    assert await record(cloud, s.id) == (revision, before)
    await clean(cloud)


async def test_a_failed_rebuild_is_error(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(fake={"fail_steps": ["destroy"]}), fake_hosts=1)
    await make_flavor_image(admin)
    s = await boot(deployment, admin)
    reply = await act(admin, s.id, "rebuild", image="cirros")
    done = await wait_server(deployment.store, s.id, idle)
    assert done is not None and done.vm_state == S.ERROR and done.fault is not None
    await actions_finished(deployment, s.id)  # the action's record is written after the server's
    action = (await admin("servers.events.get", {"id": s.id, "request_id": reply["request_id"]}))[
        "instance_action"
    ]
    assert action["message"] == "Error"
    assert [e["result"] for e in action["events"] if e["event"] == "compute_rebuild"] == ["Error"]
    await clean(deployment)


# --- lock, reset-state, console-log -------------------------------------------------------------


async def test_a_tenant_locks_its_own_server(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    s = await boot(cloud, demo)
    locked = (await act(demo, s.id, "lock", reason="maintenance"))["server"]
    assert (locked["locked"], locked["locked_by"], locked["locked_reason"]) == (
        True,
        "owner",
        "maintenance",
    )
    # Locking again changes nothing.
    await act(demo, s.id, "lock")
    assert (await record(cloud, s.id))[1].locked_reason == "maintenance"
    # The locker still acts on it; so does an admin.
    assert (await do(cloud, demo, s.id, "stop")).vm_state == S.STOPPED
    assert (await do(cloud, admin, s.id, "start")).vm_state == S.ACTIVE
    assert (await act(demo, s.id, "console-log"))["output"]
    unlocked = (await act(demo, s.id, "unlock"))["server"]
    assert unlocked["locked"] is False and unlocked["locked_by"] is None
    actions = [
        a["action"] for a in (await demo("servers.events.list", {"id": s.id}))["instance_actions"]
    ]
    assert actions[:3] == ["unlock", "start", "stop"] and "lock" in actions
    await clean(cloud)


async def test_an_admin_lock_holds_against_the_tenant(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    s = await boot(cloud, demo)
    locked = (await act(admin, s.id, "lock"))["server"]
    assert locked["locked_by"] == "admin"
    revision, before = await record(cloud, s.id)
    for action in ("stop", "reboot", "unlock"):
        with pytest.raises(errors.Conflict, match="is locked"):
            await act(demo, s.id, action)
    with pytest.raises(errors.Conflict, match="is locked"):
        await demo("servers.delete", {"id": s.id})
    assert await record(cloud, s.id) == (revision, before)
    # The console stays readable for the tenant.
    assert "login:" in (await act(demo, s.id, "console-log"))["output"]
    # The admin acts, unlocks; then the tenant may delete.
    assert (await do(cloud, admin, s.id, "pause")).vm_state == S.PAUSED
    await act(admin, s.id, "unlock")
    await demo("servers.delete", {"id": s.id})
    await wait_server(cloud.store, s.id, gone)
    assert all(not allocations for allocations in (await claims(cloud)).values())
    await clean(cloud)


async def test_reset_state_is_admin_only(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    s = await boot(cloud, demo)
    revision, before = await record(cloud, s.id)
    with pytest.raises(errors.Forbidden):
        await act(demo, s.id, "reset-state", state="error")
    assert await record(cloud, s.id) == (revision, before)

    reply = await act(admin, s.id, "reset-state")
    assert reply["server"]["status"] == "ERROR" and reply["server"]["task_state"] is None
    assert (await record(cloud, s.id))[1].vm_state == S.ERROR
    reply = await act(admin, s.id, "reset-state", state="active")
    assert reply["server"]["status"] == "ACTIVE"
    actions = (await admin("servers.events.list", {"id": s.id}))["instance_actions"]
    assert [a["action"] for a in actions[:2]] == ["reset-state", "reset-state"]
    assert all(a["finish_time"] is not None for a in actions[:2])
    await clean(cloud)


async def test_console_log(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await make_flavor_image(admin)
    s = await boot(cloud, demo)
    full = (await act(demo, s.id, "console-log"))["output"]
    assert "booting cirros" in full and "vm1 login:" in full
    await do(cloud, demo, s.id, "reboot")
    full = (await act(demo, s.id, "console-log"))["output"]
    lines = full.splitlines()
    assert len(lines) == 3 and "soft reboot" in lines[-1]
    last = (await act(demo, s.id, "console-log", length=1))["output"]
    assert last.splitlines() == lines[-1:]
    two = (await act(demo, s.id, "console-log", length=2))["output"]
    assert two.splitlines() == lines[-2:]
    with pytest.raises(errors.BadRequest):
        await act(demo, s.id, "console-log", length=0)

    # A server that never got a host has no console.
    await admin("flavors.create", {"name": "m1.huge", "vcpus": 512, "ram_mb": 512, "disk_gb": 1})
    nowhere = (
        await admin("servers.create", {"name": "big", "flavor": "m1.huge", "image": "cirros"})
    )["server"]
    failed = await wait_server(cloud.store, nowhere["id"], settled)
    assert failed is not None and failed.vm_state == S.ERROR and failed.host is None
    with pytest.raises(errors.Conflict, match="on no host"):
        await act(admin, nowhere["id"], "console-log")
    await admin("servers.delete", {"id": nowhere["id"]})
    await wait_server(cloud.store, nowhere["id"], gone)
    await clean(cloud)


# --- deletes that supersede a build or an action -------------------------------------------------


async def test_delete_mid_build(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(fake={"spawn_delay": 2.0}), fake_hosts=2)
    await make_flavor_image(admin)
    created = (
        await admin("servers.create", {"name": "slow", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    spawning = await wait_server(
        deployment.store, created["id"], lambda s: s is not None and s.task_state == S.SPAWNING
    )
    assert spawning is not None and spawning.host is not None
    assert created["id"] in (await claims(deployment))[spawning.host]
    with pytest.raises(errors.Conflict, match="vm_state building"):
        await act(admin, created["id"], "stop")
    deleting = (await admin("servers.delete", {"id": created["id"]}))["server"]
    assert deleting["status"] == "BUILD" and deleting["task_state"] == S.DELETING
    await wait_server(deployment.store, created["id"], gone)
    assert all(not a for a in (await claims(deployment)).values())
    host = (await deployment.store.hosts.get(spawning.host)).value
    assert host.in_progress == []
    await clean(deployment)


async def test_delete_mid_action(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(fake={"step_delay": 1.0}), fake_hosts=1)
    await make_flavor_image(admin)
    s = await boot(deployment, admin)
    async with notifications(deployment) as queue:
        await act(admin, s.id, "stop")
        with pytest.raises(errors.Conflict, match="task_state powering-off"):
            await act(admin, s.id, "pause")
        await admin("servers.delete", {"id": s.id})
        await wait_server(deployment.store, s.id, gone)
        seen = await until(queue, s.id, "instance.delete.end")
    assert "instance.stop.end" not in [n.event_type for n in seen]  # the delete superseded it
    assert all(not a for a in (await claims(deployment)).values())
    # The action log outlives the server, for an admin.
    actions = (await admin("servers.events.list", {"id": s.id}))["instance_actions"]
    assert [a["action"] for a in actions] == ["delete", "stop", "create"]
    await clean(deployment)


# --- the action log and notifications ------------------------------------------------------------


async def test_the_action_log(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await make_flavor_image(admin)
    s = await boot(cloud, demo)
    stop = await act(demo, s.id, "stop")
    await wait_server(cloud.store, s.id, idle)
    start = await act(demo, s.id, "start")
    await wait_server(cloud.store, s.id, idle)

    listed = (await demo("servers.events.list", {"id": s.id}))["instance_actions"]
    assert [a["action"] for a in listed] == ["start", "stop", "create"]  # newest first
    assert [a["request_id"] for a in listed[:2]] == [start["request_id"], stop["request_id"]]
    assert all(a["user"] == "demo" and a["project"] == "DEMO" for a in listed)
    assert all(a["events"] == [] and a["finish_time"] is not None for a in listed)
    assert all(a["message"] is None for a in listed)

    shown = (await demo("servers.events.get", {"id": s.id, "request_id": stop["request_id"]}))[
        "instance_action"
    ]
    assert shown["action"] == "stop"
    assert [(e["event"], e["result"]) for e in shown["events"]] == [
        ("conductor_stop", "Success"),
        ("compute_power_off", "Success"),
    ]
    assert all(e["host"] is None for e in shown["events"])  # tenants see no hosts
    as_admin = (await admin("servers.events.get", {"id": s.id, "request_id": stop["request_id"]}))[
        "instance_action"
    ]
    compute = next(e for e in as_admin["events"] if e["event"] == "compute_power_off")
    assert compute["host"] == s.host and compute["finish_time"] >= compute["start_time"]

    with pytest.raises(errors.NotFound):
        await demo("servers.events.get", {"id": s.id, "request_id": "req-nope"})
    # Another project's server and its log are not there for a tenant.
    theirs = await boot(cloud, admin, "a1")
    with pytest.raises(errors.NotFound):
        await demo("servers.events.list", {"id": theirs.id})
    mine = (await admin("servers.events.list", {"id": theirs.id}))["instance_actions"]
    with pytest.raises(errors.NotFound):
        await demo("servers.events.get", {"id": theirs.id, "request_id": mine[0]["request_id"]})
    await clean(cloud)


async def test_notifications(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    async with notifications(cloud) as queue:
        s = await boot(cloud, admin)
        await until(queue, s.id, "instance.create.end")
        reply = await act(admin, s.id, "stop")
        seen = await until(queue, s.id, "instance.stop.end")
    types = [n.event_type for n in seen]
    assert types == [
        "instance.update",
        "instance.stop.start",
        "instance.update",
        "instance.stop.end",
    ]
    assert all(n.payload_version == "1.0" and n.publisher_id.startswith("hvmesh:") for n in seen)
    first, _, last_update, end = seen
    assert first.old_state == {"vm_state": "active", "task_state": None, "power_state": 1}
    assert (first.payload.task_state, first.payload.request_id) == (
        S.POWERING_OFF,
        reply["request_id"],
    )
    assert last_update.old_state == {
        "vm_state": "active",
        "task_state": "powering-off",
        "power_state": 1,
    }
    assert (end.payload.vm_state, end.payload.power_state, end.payload.status) == (
        S.STOPPED,
        S.SHUTDOWN,
        "SHUTOFF",
    )
    assert end.payload.task_state is None and end.error is None
    assert end.payload.flavor == "m1.small" and end.payload.host == s.host
    # Names with a '-' are spelled with '_' (Nova's), and a lock is an update of its own.
    async with notifications(cloud) as queue:
        await act(admin, s.id, "start")
        await until(queue, s.id, "instance.start.end")
        await act(admin, s.id, "lock")
        await act(admin, s.id, "reset-state", state="error")
        update = (await until(queue, s.id, "instance.update"))[-1]
        assert update.old_state is not None and update.old_state["vm_state"] == "active"
        assert update.payload.vm_state == "error" and update.payload.locked is True
    raw = msgspec.json.encode(update)
    assert b'"payload_version":"1.0"' in raw
    await clean(cloud)


async def test_many_servers_act_at_once(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    servers = [await boot(cloud, admin, f"vm{i}") for i in range(4)]
    held = await claims(cloud)
    await asyncio.gather(*(act(admin, s.id, "pause") for s in servers))
    done = await wait_all(cloud.store, {s.id for s in servers}, idle, timeout=30)
    assert all(s is not None and s.vm_state == S.PAUSED for s in done.values())
    assert await claims(cloud) == held
    await clean(cloud)
