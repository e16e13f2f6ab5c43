"""Claims that hold under concurrency: one host per request, filters' limits, unique names.

A hung scheduler answering requests the conductor already asked again elsewhere adds no
second allocation (real `hvmesh scheduler` processes, stopped with SIGSTOP); copies of
one request answered at once land on one host; limits a filter judges on the index
(instances per host, different_host) hold when many placements race through several
schedulers; and a flavor, aggregate, network or keypair name is taken once however many
creates race for it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import time
from typing import Any

import msgspec
import pytest

from hvmesh.core import config
from hvmesh.core.api.service import ApiService
from hvmesh.core.bus import micro as bus
from hvmesh.core.conductor.service import Conductor
from hvmesh.core.ops import audit
from hvmesh.core.ops.launcher import fake_fleet
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.base import new_id
from hvmesh.core.protocol.messages import RequestSpec, Selection
from hvmesh.core.protocol.records import Flavor, NameClaim, SchedulerHints
from hvmesh.core.state import leases, names, placement
from hvmesh.schedulers.service import SchedulerService
from tests.support import (
    ApiClient,
    Deployment,
    make_flavor_image,
    settled,
    stopped,
    until,
    wait_all,
    wait_for_services,
)

FLAVOR = Flavor(id="f1", name="f1", vcpus=1, ram_mb=256, disk_gb=1)


async def holders(dep: Deployment) -> dict[str, list[str]]:
    """Consumer id -> the hosts holding an allocation for it."""
    assert dep.store is not None
    held: dict[str, list[str]] = collections.defaultdict(list)
    for host in await dep.store.hosts.values():
        for consumer in host.allocations:
            held[consumer].append(host.name)
    return held


async def test_hung_schedulers_answering_late_claim_nothing_twice(
    deployment: Deployment, admin: ApiClient
) -> None:
    """Both schedulers stop while servers are created; the conductor times out and asks
    again, so each stopped scheduler holds stale copies of every request. Once they go
    on, each server still ends with exactly one allocation, on its own host."""
    cfg = deployment.config(nats={"request_timeout": 1.5}, conductor={"scheduler_deadline": 120})
    cfg_file = deployment.tmp / "schedulers.ini"
    config.write(cfg, cfg_file)
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    await deployment.start(ApiService(nc, cfg), Conductor(nc, cfg), *fake_fleet(nc, cfg, 4))
    schedulers = [deployment.spawn("scheduler", cfg_file=cfg_file) for _ in range(2)]
    await wait_for_services(admin.nc, subjects.SCHEDULER_SERVICE, 2)
    await make_flavor_image(admin)

    asked: collections.Counter[str] = collections.Counter()
    twice = asyncio.Event()
    ids: set[str] = set()
    listener = await deployment.connect("admin")

    async def seen(msg: Any) -> None:
        asked[msgspec.json.decode(msg.data, type=RequestSpec).server_id] += 1
        if ids and all(asked[i] >= 2 for i in ids):
            twice.set()

    sub = await listener.subscribe(subjects.SCHED_SELECT, cb=seen)
    try:
        with stopped(schedulers):
            for n in range(10):
                body = {"name": f"vm{n}", "flavor": "m1.small", "image": "cirros"}
                ids.add((await admin("servers.create", body))["server"]["id"])
            # Every server asked for, left unanswered past the timeout, and asked again.
            async with asyncio.timeout(60):
                await twice.wait()
        done = await wait_all(deployment.store, ids, settled, timeout=90)
    finally:
        await sub.unsubscribe()

    held = await holders(deployment)
    for sid in ids:
        server = done[sid]
        assert server is not None and server.vm_state == "active", server
        assert held[sid] == [server.host], f"{sid} holds allocations on {held[sid]}"
    found = await audit.audit(deployment.store)
    assert [f for f in found if f.kind in ("double", "stale", "leaked")] == []
    assert all(p.poll() is None for p in schedulers)


async def start_schedulers(dep: Deployment, cfg: config.Config, count: int) -> Any:
    """`count` scheduler services (each its own connection) and a connection to ask them."""
    for _ in range(count):
        nc = await dep.service_connection()
        dep.connections.append(nc)
        await dep.start(SchedulerService(nc, cfg))
    asker = await dep.service_connection()
    dep.connections.append(asker)
    await wait_for_services(asker, subjects.SCHEDULER_SERVICE, count)
    return asker


async def select(nc: Any, spec: RequestSpec) -> Selection:
    return msgspec.convert(await bus.call(nc, subjects.SCHED_SELECT, spec, timeout=30), Selection)


def spec_for(server_id: str, **extra: Any) -> RequestSpec:
    return RequestSpec(server_id=server_id, project="p", flavor=FLAVOR, **extra)


async def test_copies_of_one_request_land_on_one_host(deployment: Deployment) -> None:
    cfg = deployment.config()
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    fleet = fake_fleet(nc, cfg, 4)
    await deployment.start(*fleet)
    asker = await start_schedulers(deployment, cfg, 2)
    assert deployment.store is not None
    names_of = [a.host for a in fleet]

    # 20 copies of one request at once, each (as a stale copy might) seeing other hosts.
    sid = new_id()
    key = leases.build_key(sid, 0, 0)
    copies = [
        spec_for(sid, claim_key=key, ignore_hosts=[names_of[i % 4]], num_alternates=0)
        for i in range(20)
    ]
    answers = await asyncio.gather(*(select(asker, s) for s in copies))
    hosts = {a.host for a in answers}
    assert len(hosts) == 1 and None not in hosts, answers
    (host,) = hosts
    assert (await holders(deployment))[sid] == [host]

    # Its claim given back (a failed spawn): a copy answered now is superseded, claims nothing.
    await placement.release(deployment.store, host, sid)
    late = await select(asker, spec_for(sid, claim_key=key))
    assert (late.host, late.superseded) == (None, True)
    assert "superseded" in late.reason
    assert sid not in await holders(deployment)

    # A request its caller gave up on (expired) claims nothing either.
    gone = await select(asker, spec_for(new_id(), claim_key="x.b0.0", expires_at=time.time() - 1))
    assert gone.host is None and "expired" in gone.reason
    assert set(await holders(deployment)) == set()
    with pytest.raises(errors.BadRequest, match=r"claim_key 'a\.\.b'"):
        await select(asker, spec_for(new_id(), claim_key="a..b"))


async def test_filter_limits_hold_under_concurrent_placements(deployment: Deployment) -> None:
    s = config.Config().scheduler
    cfg = deployment.config(
        scheduler={
            "enabled_filters": [*s.enabled_filters, "NumInstancesFilter"],
            "max_instances_per_host": 2,
        }
    )
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    await deployment.start(*fake_fleet(nc, cfg, 5))
    asker = await start_schedulers(deployment, cfg, 3)

    # 40 placements at once for 5 hosts of at most 2 servers each.
    ids = [new_id() for _ in range(40)]
    answers = await asyncio.gather(
        *(select(asker, spec_for(i, claim_key=leases.build_key(i, 0, 0))) for i in ids)
    )
    placed = [a for a in answers if a.host is not None]
    assert len(placed) == 10, [a.reason for a in answers if a.host is None][:3]
    assert all(a.alternates == [] for a in placed)  # a claim check applies: none offered
    held = await holders(deployment)
    per_host = collections.Counter(h for i in ids for h in held.get(i, []))
    assert sorted(per_host.values()) == [2] * 5

    # different_host naming each other: whichever claims second sees the first.
    batch = [new_id() for _ in range(16)]
    hints = {i: SchedulerHints(different_host=[o for o in batch if o != i]) for i in batch}
    roomy = deployment.config()  # NumInstancesFilter off: only the hints limit
    for svc in [c for c in deployment.components if isinstance(c, SchedulerService)]:
        await svc.stop()
    asker = await start_schedulers(deployment, roomy, 3)
    answers = await asyncio.gather(
        *(
            select(asker, spec_for(i, claim_key=leases.build_key(i, 0, 0), scheduler_hints=h))
            for i, h in hints.items()
        )
    )
    held = await holders(deployment)
    hosts = [held[i] for i in batch if i in held]
    assert all(len(h) == 1 for h in hosts)
    assert len(hosts) == 5 and len({h[0] for h in hosts}) == 5, hosts
    assert sum(a.host is not None for a in answers) == 5


async def test_a_name_is_taken_once_under_concurrent_creates(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    assert cloud.store is not None

    async def attempt(client: ApiClient, verb: str, body: dict[str, Any]) -> str:
        try:
            await client(verb, body)
        except errors.Conflict as exc:
            return exc.message
        return "created"

    for verb, body, client in [
        ("flavors.create", {"name": "m1.race", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}, admin),
        ("aggregates.create", {"name": "rack-1"}, admin),
        ("networks.create", {"name": "net-a", "cidr": "10.9.0.0/24"}, admin),
        ("keypairs.create", {"name": "laptop", "public_key": PUBLIC_KEY}, demo),
    ]:
        outcomes = await asyncio.gather(*(attempt(client, verb, body) for _ in range(12)))
        assert outcomes.count("created") == 1, (verb, outcomes)
        assert all(repr(body["name"]) in o for o in outcomes if o != "created"), outcomes

    # Deleted, the name is free again; created again, it is taken again.
    await admin("flavors.delete", {"id": "m1.race"})
    flavor = {"name": "m1.race", "vcpus": 2, "ram_mb": 64, "disk_gb": 1}
    assert (await admin("flavors.create", flavor))["flavor"]["vcpus"] == 2
    assert await attempt(admin, "flavors.create", flavor) == "a flavor named 'm1.race' exists"
    keypair = {"name": "laptop", "public_key": PUBLIC_KEY}
    await demo("keypairs.delete", {"name": "laptop"})
    assert await attempt(demo, "keypairs.create", keypair) == "created"
    assert await attempt(admin, "keypairs.create", keypair) == "created"  # another user's

    # A hold left by a create that died before writing its record: a create in progress
    # while young (409), free for the next create once older than the grace.
    key = names.name_key("flavor", "m1.crashed")
    await cloud.store.names.put(key, NameClaim(kind="flavor", name="m1.crashed", owner=new_id()))
    crashed = {"name": "m1.crashed", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}
    assert "m1.crashed" in await attempt(admin, "flavors.create", crashed)
    old = NameClaim(
        kind="flavor", name="m1.crashed", owner=new_id(), at=time.time() - names.GRACE - 1
    )
    await cloud.store.names.put(key, old)
    assert await attempt(admin, "flavors.create", crashed) == "created"
    held = await cloud.store.names.get(key)
    assert held is not None and held.value.owner != old.owner


# An OpenSSH ed25519 public key (made-up key bytes: only the format matters here).
PUBLIC_KEY = (
    "ssh-ed25519 "
    + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)).decode()
    + " test"
)


async def test_a_claim_for_a_server_deleted_meanwhile_is_given_back(cloud: Deployment) -> None:
    """A conductor died between the scheduler's claim and writing the host into the record,
    and a delete removed the record (it had no host to release): the build's redelivered
    task finds the record gone and gives back the claim its lease names."""
    from hvmesh.core.protocol.messages import Task
    from hvmesh.core.protocol.records import PlacementLease
    from hvmesh.core.state.tasks import publish_task

    st = cloud.store
    assert st is not None
    gone = new_id()
    host = "fake-0001"

    def claimed(h: Any) -> Any:
        return msgspec.structs.replace(
            h,
            allocations={**h.allocations, gone: {"VCPU": 1}},
            in_progress=[*h.in_progress, gone],
        )

    await st.hosts.mutate(host, claimed)
    await st.placement_leases.create(
        leases.build_key(gone, 0, 0), PlacementLease(server_id=gone, host=host)
    )
    await publish_task(cloud.nc.jetstream(), Task(kind="build", server_id=gone))

    async def given_back() -> bool:
        entry = await st.hosts.get(host)
        return entry is not None and gone not in entry.value.allocations

    await until(given_back, 30, "the claim of the deleted server given back")
    record = (await st.hosts.get(host)).value
    assert gone not in record.in_progress
