"""A process's hosts heartbeat in groups: one record per group, read host by host.

A fleet of simulated hosts in one process writes one heartbeat record per group of
hosts (agents/heartbeats.py); every reader (core/state/liveness.py, the inventory index,
the conductor's host monitor) still sees each host's own last beat. A host of a group
whose hypervisor is unreachable, or that stops, goes down while its group-mates stay up.
"""

from __future__ import annotations

import logging
from typing import Any

from hvmesh.agents.heartbeats import Heartbeats
from hvmesh.core.ops.launcher import fake_names, make_agent
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Heartbeat, Host
from hvmesh.core.state import liveness
from hvmesh.core.state.store import Store
from tests.support import Deployment, until

FAST = {
    "DEFAULT": {"service_down_time": 2.0},
    "conductor": {"action_timeout": 600, "host_check_interval": 0.3},
    "compute": {"heartbeat_interval": 0.3},
}


def store_of(deployment: Deployment) -> Store:
    assert deployment.store is not None
    return deployment.store


async def fleet(deployment: Deployment, cfg: Any, count: int, group_size: int) -> list[Any]:
    """`count` fake hosts sharing one connection and heartbeat groups of `group_size`."""
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    names = fake_names(count, "grp")
    beats = Heartbeats(cfg.compute.heartbeat_interval, group_size=group_size)
    beats.plan(names)
    agents = [make_agent(nc, cfg, "fake", host, beats=beats) for host in names]
    await deployment.start(*agents)
    return agents


async def test_a_fleet_writes_one_record_per_group_and_each_host_reads_as_its_own(
    deployment: Deployment,
) -> None:
    cfg = deployment.config(**FAST)
    await deployment.start_core(cfg)
    agents = await fleet(deployment, cfg, 5, group_size=2)
    store = store_of(deployment)
    names = [a.host for a in agents]

    keys = sorted(r.host for r in await store.heartbeats.values())
    assert keys == ["grp-0001", "grp-0003", "grp-0005"]
    records = {k: (await store.heartbeats.get(k)).value for k in keys}  # type: ignore[union-attr]
    assert records["grp-0001"].hosts == ["grp-0001", "grp-0002"]
    assert records["grp-0005"].hosts == ["grp-0005"]
    keyed = {
        n: ("grp-0001", "grp-0001", "grp-0003", "grp-0003", "grp-0005")[i]
        for i, n in enumerate(names)
    }
    for name in names:
        host = (await store.hosts.get(name)).value  # type: ignore[union-attr]
        assert host.beat_key == keyed[name]
        assert await liveness.is_up(store, name, cfg.DEFAULT.service_down_time), name
    assert await liveness.up_since(store, now() - 60) >= set(names)

    # The API's inventory index sees every host up, as the scheduler's does.
    api = next(c for c in deployment.components if type(c).__name__ == "ApiService")
    await api.index.wait_for(lambda: all(api.index.is_up(n) for n in names))


async def test_a_host_whose_hypervisor_is_unreachable_goes_down_alone(
    deployment: Deployment, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    # A down time well above the beat interval: a stall of the machine must not take the
    # group-mates for down too (what "alone" checks).
    cfg = deployment.config(**(FAST | {"DEFAULT": {"service_down_time": 5.0}}))
    await deployment.start_core(cfg)
    agents = await fleet(deployment, cfg, 3, group_size=10)
    store = store_of(deployment)
    sick, well = agents[1], [agents[0], agents[2]]
    seen = await liveness.last_beat(store, sick.host)
    assert seen is not None

    sick.driver.healthy = lambda: False  # its vCenter or BMC gone: it must not say it is up
    try:
        await _goes_down_alone(store, cfg, caplog, sick, well, seen)
    finally:
        del sick.driver.healthy  # reachable again

    async def sick_up() -> bool:
        return await liveness.is_up(store, sick.host, cfg.DEFAULT.service_down_time)

    await until(sick_up, 30, "the host to be up again")


async def _goes_down_alone(
    store: Store, cfg: Any, caplog: Any, sick: Any, well: list[Any], seen: float
) -> None:
    """`sick` is down, kept in its group's record with its last beat; `well` stay up;
    the conductor's host monitor takes it, and only it, for down."""

    async def sick_down() -> bool:
        return not await liveness.is_up(store, sick.host, cfg.DEFAULT.service_down_time)

    await until(sick_down, 30, "the unreachable host to be down")
    record = (await store.heartbeats.get("grp-0001")).value  # type: ignore[union-attr]
    assert sick.host not in (record.hosts or []) and sick.host in record.stale
    assert record.stale[sick.host] >= seen  # its last beat, kept, ageing
    for agent in well:  # its group-mates beat on in the same record
        assert await liveness.is_up(store, agent.host, cfg.DEFAULT.service_down_time)

    def monitor_saw() -> bool:
        return any(getattr(r, "host", "") == sick.host for r in _down(caplog))

    await until(monitor_saw, 30, "the host monitor to take the host for down")
    assert {r.host for r in _down(caplog)} == {sick.host}


async def test_a_stopped_host_keeps_its_last_beat_in_its_group(deployment: Deployment) -> None:
    cfg = deployment.config(**FAST)
    await deployment.start_core(cfg)
    agents = await fleet(deployment, cfg, 2, group_size=10)
    store = store_of(deployment)
    gone, stays = agents
    await gone.stop()
    deployment.components.remove(gone)
    stopped_at = now()

    async def rewritten() -> bool:
        entry = await store.heartbeats.get("grp-0001")
        return entry is not None and entry.value.at > stopped_at + cfg.compute.heartbeat_interval

    await until(rewritten, 30, "the group's record to be written again")
    record: Heartbeat = (await store.heartbeats.get("grp-0001")).value  # type: ignore[union-attr]
    assert record.hosts == [stays.host]
    assert gone.host in record.stale and record.stale[gone.host] <= stopped_at
    assert await liveness.last_beat(store, gone.host) == record.stale[gone.host]


def _down(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "conductor.host_down"]


async def test_a_record_speaks_only_for_hosts_that_name_it(deployment: Deployment) -> None:
    """An agent may write only its own hosts' keys; listing another's host in its record
    must not make that host look up (the index checks the host record's beat_key)."""
    cfg = deployment.config(**FAST)
    await deployment.start_core(cfg)
    store = store_of(deployment)
    api = next(c for c in deployment.components if type(c).__name__ == "ApiService")
    index = api.index
    await store.hosts.put("lonely", Host(name="lonely", driver="fake"))
    await store.hosts.put("member", Host(name="member", driver="fake", beat_key="mallory"))
    await index.wait_for(lambda: "lonely" in index.hosts and "member" in index.hosts)

    forged = Heartbeat(
        host="mallory", at=now(), agent_id="x", hosts=["mallory", "lonely", "member"]
    )
    await store.heartbeats.put("mallory", forged)
    await index.wait_for(lambda: "mallory" in index.heartbeats)
    assert "member" in index.heartbeats  # its record names mallory's group
    assert "lonely" not in index.heartbeats and not index.is_up("lonely")

    await store.heartbeats.put("lonely", Heartbeat(host="lonely", at=now(), agent_id="y"))
    await index.wait_for(lambda: index.is_up("lonely"))


async def test_a_group_record_before_its_host_records_counts_once_they_come(
    deployment: Deployment,
) -> None:
    cfg = deployment.config(**FAST)
    await deployment.start_core(cfg)
    store = store_of(deployment)
    api = next(c for c in deployment.components if type(c).__name__ == "ApiService")
    index = api.index
    beat = Heartbeat(host="first", at=now(), agent_id="x", hosts=["first", "second"])
    await store.heartbeats.put("first", beat)
    await index.wait_for(lambda: "first" in index.heartbeats)
    assert "second" not in index.heartbeats  # no host record names the group yet

    await store.hosts.put("second", Host(name="second", driver="fake", beat_key="first"))
    await index.wait_for(lambda: index.is_up("second"))
