"""Moves end to end through the API on fake hosts: resize with confirm, revert and
auto-confirm, cold and live migration, evacuation; their refusals, rollbacks and
timeouts, with the placement audit clean after each.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hvmesh.core.ops import audit
from hvmesh.core.protocol import errors
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.records import Server
from tests.support import (
    ApiClient,
    Deployment,
    act,
    boot,
    idle,
    make_flavor_image,
    settled,
    wait_server,
)

SMALL = {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
LARGE = {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 2}


async def setup(admin: ApiClient) -> None:
    await make_flavor_image(admin)
    await admin("flavors.create", {"name": "m1.large", "vcpus": 2, "ram_mb": 1024, "disk_gb": 2})


async def do(dep: Deployment, admin: ApiClient, server_id: str, action: str, **body: Any) -> Server:
    """Run an action to its end; the record as it rests afterwards."""
    await act(admin, server_id, action, **body)
    s = await wait_server(dep.store, server_id, idle)
    assert s is not None
    return s


async def claims(dep: Deployment) -> dict[str, dict[str, dict[str, int]]]:
    assert dep.store is not None
    return {h.name: h.allocations for h in await dep.store.hosts.values() if h.allocations}


async def clean(dep: Deployment) -> None:
    assert dep.store is not None
    assert await audit.audit(dep.store) == []
    for h in await dep.store.hosts.values():
        assert h.in_progress == [], h


async def two_hosts(
    dep: Deployment, admin: ApiClient, dst: dict[str, Any] | None = None, **cfg: Any
) -> tuple[Server, Any, Any]:
    """Core, host "src" with a server on it, then host "dst" (with its own [fake] settings)."""
    config = dep.config(**cfg)
    await dep.start_core(config)
    src = await dep.start_agent("src", config)
    await setup(admin)
    s = await boot(dep, admin)
    assert s.host == "src"
    dst_agent = await dep.start_agent("dst", dep.config(**cfg, fake=dst or {}))
    return s, src, dst_agent


# --- resize, confirm, revert ----------------------------------------------------------------


async def test_resize_then_confirm(cloud: Deployment, admin: ApiClient) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    source = s.host
    reply = await act(admin, s.id, "resize", flavor="m1.large")
    assert reply["server"]["status"] == "RESIZE"
    resized = await wait_server(cloud.store, s.id, idle)
    assert resized is not None and resized.vm_state == S.RESIZED
    assert resized.host != source and resized.flavor.name == "m1.large"
    m = resized.migration
    assert m is not None and m.source_host == source and m.dest_host == resized.host
    assert m.status == "finished" and m.kind == "resize"
    # Both allocations are held: the old flavor under the migration on the source, the new
    # one under the server on the destination.
    held = await claims(cloud)
    assert held[source] == {m.id: SMALL}
    assert held[resized.host] == {s.id: LARGE}
    shown = (await admin("servers.get", {"id": s.id}))["server"]
    assert shown["status"] == "VERIFY_RESIZE"
    await clean(cloud)

    # A second resize, or a confirm of something else, is refused while it waits.
    with pytest.raises(errors.Conflict, match="vm_state resized"):
        await act(admin, s.id, "resize", flavor="m1.small")
    confirmed = await do(cloud, admin, s.id, "confirm-resize")
    assert (confirmed.vm_state, confirmed.migration) == (S.ACTIVE, None)
    assert confirmed.host == resized.host and confirmed.flavor.name == "m1.large"
    assert await claims(cloud) == {resized.host: {s.id: LARGE}}
    actions = (await admin("servers.events.list", {"id": s.id}))["instance_actions"]
    assert [a["action"] for a in actions] == ["confirm-resize", "resize", "create"]
    assert all(a["message"] is None for a in actions)
    await clean(cloud)

    # Nothing to confirm or revert any more.
    for action in ("confirm-resize", "revert-resize"):
        with pytest.raises(errors.Conflict, match="vm_state active"):
            await act(admin, s.id, action)


async def test_resize_then_revert(cloud: Deployment, admin: ApiClient) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    source = s.host
    resized = await do(cloud, admin, s.id, "resize", flavor="m1.large")
    assert resized.vm_state == S.RESIZED
    dest = resized.host
    reverted = await do(cloud, admin, s.id, "revert-resize")
    assert (reverted.vm_state, reverted.host, reverted.migration) == (S.ACTIVE, source, None)
    assert reverted.flavor.name == "m1.small" and reverted.power_state == S.RUNNING
    assert await claims(cloud) == {source: {s.id: SMALL}}
    assert dest != source
    await clean(cloud)


async def test_resize_of_a_stopped_server_stays_stopped(
    cloud: Deployment, admin: ApiClient
) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    assert (await do(cloud, admin, s.id, "stop")).vm_state == S.STOPPED
    resized = await do(cloud, admin, s.id, "resize", flavor="m1.large")
    assert resized.vm_state == S.RESIZED and resized.power_state == S.SHUTDOWN
    confirmed = await do(cloud, admin, s.id, "confirm-resize")
    assert confirmed.vm_state == S.STOPPED
    await clean(cloud)


# 0.001: the timer, set just before the resize ends, is due at once and may find the
# resize still finishing; it waits for the end instead of dropping the confirm.
@pytest.mark.parametrize("window", [0.5, 0.001])
async def test_resize_is_confirmed_automatically(
    deployment: Deployment, admin: ApiClient, window: float
) -> None:
    cfg = deployment.config(conductor={"resize_confirm_window": window})
    await deployment.start_core(cfg, fake_hosts=2)
    await setup(admin)
    s = await boot(deployment, admin)
    await act(admin, s.id, "resize", flavor="m1.large")
    done = await wait_server(
        deployment.store,
        s.id,
        lambda v: idle(v) and v.vm_state == S.ACTIVE and v.flavor.name == "m1.large",  # type: ignore[union-attr]
    )
    assert done is not None and done.migration is None and done.host != s.host
    assert await claims(deployment) == {done.host: {s.id: LARGE}}
    actions = (await admin("servers.events.list", {"id": s.id}))["instance_actions"]
    assert [a["action"] for a in actions] == ["confirm-resize", "resize", "create"]
    await clean(deployment)


async def test_resize_with_no_room_elsewhere_changes_nothing(
    cloud: Deployment, admin: ApiClient
) -> None:
    await setup(admin)
    await admin("flavors.create", {"name": "huge", "vcpus": 64, "ram_mb": 1024, "disk_gb": 1})
    s = await boot(cloud, admin)
    before = await claims(cloud)
    done = await do(cloud, admin, s.id, "resize", flavor="huge")
    assert (done.vm_state, done.host, done.migration) == (S.ACTIVE, s.host, None)
    assert done.flavor.name == "m1.small"
    assert done.fault is not None and "No valid host" in done.fault.message
    assert await claims(cloud) == before
    await clean(cloud)


async def test_resize_rolls_back_when_the_source_fails(
    deployment: Deployment, admin: ApiClient
) -> None:
    config = deployment.config(fake={"fail_steps": ["migrate_disk_and_power_off"]})
    await deployment.start_core(config)
    await deployment.start_agent("src", config)
    await setup(admin)
    s = await boot(deployment, admin)
    await deployment.start_agent("dst")
    done = await do(deployment, admin, s.id, "resize", flavor="m1.large")
    assert (done.vm_state, done.host, done.migration) == (S.ACTIVE, "src", None)
    assert done.flavor.name == "m1.small"
    assert done.fault is not None and "migrate_disk_and_power_off" in done.fault.message
    assert await claims(deployment) == {"src": {s.id: SMALL}}
    await clean(deployment)


async def test_resize_failing_on_the_destination_ends_in_error(
    deployment: Deployment, admin: ApiClient
) -> None:
    s, _, _ = await two_hosts(deployment, admin, dst={"fail_steps": ["finish_migration"]})
    done = await do(deployment, admin, s.id, "resize", flavor="m1.large")
    assert (done.vm_state, done.host, done.migration) == (S.ERROR, "src", None)
    assert done.fault is not None and "finish_migration" in done.fault.message
    assert await claims(deployment) == {"src": {s.id: SMALL}}
    await clean(deployment)


async def test_revert_failing_on_the_source_ends_in_error(
    deployment: Deployment, admin: ApiClient
) -> None:
    config = deployment.config(fake={"fail_steps": ["finish_revert_migration"]})
    await deployment.start_core(config)
    await deployment.start_agent("src", config)
    await setup(admin)
    s = await boot(deployment, admin)
    await deployment.start_agent("dst")
    assert (await do(deployment, admin, s.id, "resize", flavor="m1.large")).host == "dst"
    done = await do(deployment, admin, s.id, "revert-resize")
    assert (done.vm_state, done.host, done.migration) == (S.ERROR, "src", None)
    assert done.flavor.name == "m1.small"
    assert await claims(deployment) == {"src": {s.id: SMALL}}
    await clean(deployment)


async def test_a_move_step_that_never_answers_times_out(
    deployment: Deployment, admin: ApiClient
) -> None:
    s, _, dst = await two_hosts(deployment, admin, conductor={"action_timeout": 1.0})
    await dst.stop()  # it stops taking work; its heartbeat is still fresh
    deployment.components.remove(dst)
    done = await do(deployment, admin, s.id, "migrate", host="dst")
    assert (done.vm_state, done.host, done.migration) == (S.ERROR, "src", None)
    assert done.fault is not None and "timed out" in done.fault.message
    assert await claims(deployment) == {"src": {s.id: SMALL}}
    await clean(deployment)


async def test_delete_of_a_resized_server_releases_both_claims(
    cloud: Deployment, admin: ApiClient
) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    await do(cloud, admin, s.id, "resize", flavor="m1.large")
    await admin("servers.delete", {"id": s.id})
    await wait_server(cloud.store, s.id, lambda v: v is None)
    assert await claims(cloud) == {}
    await clean(cloud)


# --- cold migration -----------------------------------------------------------------------------


async def test_migrate_to_a_chosen_host_then_confirm(cloud: Deployment, admin: ApiClient) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    target = next(h for h in ("fake-0001", "fake-0002", "fake-0003") if h != s.host)
    migrated = await do(cloud, admin, s.id, "migrate", host=target)
    assert (migrated.vm_state, migrated.host) == (S.RESIZED, target)
    assert migrated.migration is not None and migrated.migration.kind == "migration"
    assert migrated.flavor.name == "m1.small"
    assert await claims(cloud) == {s.host: {migrated.migration.id: SMALL}, target: {s.id: SMALL}}
    await clean(cloud)
    confirmed = await do(cloud, admin, s.id, "confirm-resize")
    assert (confirmed.vm_state, confirmed.host, confirmed.migration) == (S.ACTIVE, target, None)
    assert await claims(cloud) == {target: {s.id: SMALL}}
    await clean(cloud)


async def test_migrate_to_a_host_the_filters_refuse(cloud: Deployment, admin: ApiClient) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    # A target without room for the server does not pass the filters.
    await admin("flavors.create", {"name": "filler", "vcpus": 16, "ram_mb": 1024, "disk_gb": 1})
    filler = (
        await admin(
            "servers.create",
            {"name": "filler", "flavor": "filler", "image": "cirros", "availability_zone": "nova"},
        )
    )["server"]
    placed = await wait_server(cloud.store, filler["id"], settled)
    assert placed is not None and placed.host != s.host
    before = await claims(cloud)
    done = await do(cloud, admin, s.id, "migrate", host=placed.host)
    assert (done.vm_state, done.host, done.migration) == (S.ACTIVE, s.host, None)
    assert done.fault is not None and "No valid host" in done.fault.message
    assert await claims(cloud) == before
    await clean(cloud)


async def test_migrate_is_admin_only_and_needs_a_movable_state(
    cloud: Deployment, admin: ApiClient
) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    await do(cloud, admin, s.id, "pause")
    with pytest.raises(errors.Conflict, match="vm_state paused"):
        await act(admin, s.id, "migrate")
    with pytest.raises(errors.BadRequest, match="already on host"):
        await act(admin, s.id, "live-migrate", host=s.host)
    await clean(cloud)


async def test_moves_but_resize_are_admin_only(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await setup(admin)
    s = await boot(cloud, demo)
    for action in ("migrate", "live-migrate", "evacuate"):
        with pytest.raises(errors.Forbidden, match=f"compute:servers:action:{action} for"):
            await act(demo, s.id, action)
    resized = await do(cloud, demo, s.id, "resize", flavor="m1.large")
    assert resized.vm_state == S.RESIZED
    assert (await do(cloud, demo, s.id, "revert-resize")).vm_state == S.ACTIVE
    await clean(cloud)


# --- live migration -----------------------------------------------------------------------------


async def test_live_migrate(cloud: Deployment, admin: ApiClient) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    reply = await act(admin, s.id, "live-migrate")
    assert reply["server"]["status"] == "MIGRATING"
    done = await wait_server(cloud.store, s.id, idle)
    assert done is not None
    assert (done.vm_state, done.migration, done.fault) == (S.ACTIVE, None, None)
    assert done.host != s.host and done.power_state == S.RUNNING
    assert await claims(cloud) == {done.host: {s.id: SMALL}}
    await clean(cloud)


async def test_live_migrate_a_paused_server_to_a_chosen_host(
    cloud: Deployment, admin: ApiClient
) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    await do(cloud, admin, s.id, "pause")
    target = next(h for h in ("fake-0001", "fake-0002", "fake-0003") if h != s.host)
    done = await do(cloud, admin, s.id, "live-migrate", host=target)
    assert (done.vm_state, done.host, done.migration) == (S.PAUSED, target, None)
    assert await claims(cloud) == {target: {s.id: SMALL}}
    await clean(cloud)
    with pytest.raises(errors.Conflict, match="vm_state"):
        await act(admin, s.id, "confirm-resize")


async def test_live_migrate_refused_when_stopped(cloud: Deployment, admin: ApiClient) -> None:
    await setup(admin)
    s = await boot(cloud, admin)
    await do(cloud, admin, s.id, "stop")
    with pytest.raises(errors.Conflict, match="vm_state stopped"):
        await act(admin, s.id, "live-migrate")
    await clean(cloud)


@pytest.mark.parametrize(
    ("failing", "step"),
    [("src", "live_migration"), ("dst", "pre_live_migration")],
)
async def test_live_migration_failure_is_rolled_back(
    deployment: Deployment, admin: ApiClient, failing: str, step: str
) -> None:
    broken = {"fail_steps": [step]}
    config = deployment.config(fake=broken if failing == "src" else {})
    await deployment.start_core(config)
    await deployment.start_agent("src", config)
    await setup(admin)
    s = await boot(deployment, admin)
    dst = await deployment.start_agent(
        "dst", deployment.config(fake=broken if failing == "dst" else {})
    )
    done = await do(deployment, admin, s.id, "live-migrate")
    assert (done.vm_state, done.host, done.migration) == (S.ACTIVE, "src", None)
    assert done.fault is not None and step in done.fault.message
    assert s.id not in dst.driver.instances  # the destination dropped what it prepared
    assert await claims(deployment) == {"src": {s.id: SMALL}}
    await clean(deployment)


async def test_live_migration_to_a_silent_host_is_given_up(
    deployment: Deployment, admin: ApiClient
) -> None:
    s, _, dst = await two_hosts(deployment, admin, conductor={"action_timeout": 1.0})
    await dst.stop()
    deployment.components.remove(dst)
    done = await do(deployment, admin, s.id, "live-migrate", host="dst")
    # The guest never left the source: it runs on there as it did.
    assert (done.vm_state, done.host, done.migration) == (S.ACTIVE, "src", None)
    assert done.fault is not None and "timed out" in done.fault.message
    assert await claims(deployment) == {"src": {s.id: SMALL}}
    await clean(deployment)


# --- evacuation ---------------------------------------------------------------------------------


DOWN_AFTER = {"DEFAULT": {"service_down_time": 3.0}}


async def take_down(dep: Deployment, admin: ApiClient, agent: Any, host: str) -> None:
    """Stop the host's agent and wait (polling the API) until its heartbeat is stale."""
    await agent.stop()
    dep.components.remove(agent)
    for _ in range(200):
        hosts = (await admin("hypervisors.list"))["hypervisors"]
        if any(h["name"] == host and h["state"] == "down" for h in hosts):
            return
        # A clock-based condition: polled, within the bound above.
        await asyncio.sleep(0.1)  # noqa: sleep
    raise AssertionError(f"{host} never counted as down")


@pytest.mark.parametrize(("stopped", "stop"), [(False, False), (True, False), (False, True)])
async def test_evacuate(
    deployment: Deployment, admin: ApiClient, stopped: bool, stop: bool
) -> None:
    s, src, dst = await two_hosts(deployment, admin, **DOWN_AFTER)
    with pytest.raises(errors.BadRequest, match="still in use"):
        await act(admin, s.id, "evacuate")
    if stopped:
        await do(deployment, admin, s.id, "stop")
    await take_down(deployment, admin, src, "src")
    done = await do(deployment, admin, s.id, "evacuate", stop=stop)
    want = S.STOPPED if stopped or stop else S.ACTIVE
    assert (done.vm_state, done.host, done.migration, done.fault) == (want, "dst", None, None)
    assert s.id in dst.driver.instances
    assert await claims(deployment) == {"dst": {s.id: SMALL}}
    await clean(deployment)


async def test_evacuate_failing_ends_in_error_on_the_source(
    deployment: Deployment, admin: ApiClient
) -> None:
    s, src, _ = await two_hosts(deployment, admin, dst={"fail_steps": ["spawn"]}, **DOWN_AFTER)
    await take_down(deployment, admin, src, "src")
    done = await do(deployment, admin, s.id, "evacuate")
    assert (done.vm_state, done.host, done.migration) == (S.ERROR, "src", None)
    assert done.fault is not None and "spawn" in done.fault.message
    assert await claims(deployment) == {"src": {s.id: SMALL}}
    await clean(deployment)
