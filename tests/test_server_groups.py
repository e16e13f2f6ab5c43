"""Server groups: affinity and anti-affinity hold under concurrent boots; soft policies weigh."""

from __future__ import annotations

import asyncio

import pytest

from hvmesh.core.ops import audit
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import GroupSpec
from tests.support import ApiClient, Deployment, gone, make_flavor_image, settled, wait_server
from tests.test_units import host, make_index, scheduler, spec


async def boot_group(
    dep: Deployment, admin: ApiClient, policy: str, count: int, **rule: int
) -> tuple[str, list]:
    group = (await admin("server_groups.create", {"name": policy, "policy": policy, **rule}))[
        "server_group"
    ]
    replies = await asyncio.gather(
        *(
            admin(
                "servers.create",
                {
                    "name": f"{policy}-{i}",
                    "flavor": "m1.small",
                    "image": "cirros",
                    "scheduler_hints": {"group": group["id"]},
                },
            )
            for i in range(count)
        )
    )
    servers = [await wait_server(dep.store, r["server"]["id"], settled) for r in replies]
    return group["id"], servers


async def test_anti_affinity_spreads_concurrent_boots_and_refuses_the_extra(
    cloud: Deployment, admin: ApiClient
) -> None:
    await make_flavor_image(admin)
    group_id, servers = await boot_group(cloud, admin, "anti-affinity", 4)
    active = [s for s in servers if s.vm_state == "active"]
    assert len(active) == 3  # three hosts, one member each
    assert len({s.host for s in active}) == 3
    (refused,) = [s for s in servers if s.vm_state == "error"]
    assert refused.fault is not None and refused.fault.message.startswith("No valid host")
    assert await audit.audit(cloud.store) == []
    members = (await admin("server_groups.get", {"id": group_id}))["server_group"]["members"]
    assert set(members) == {s.id for s in servers}

    # Deleting a member frees its place for a new one.
    await admin("servers.delete", {"id": refused.id})
    await wait_server(cloud.store, refused.id, gone)
    await admin("servers.delete", {"id": active[0].id})
    await wait_server(cloud.store, active[0].id, gone)
    members = (await admin("server_groups.get", {"id": group_id}))["server_group"]["members"]
    assert set(members) == {s.id for s in active[1:]}
    again = (
        await admin(
            "servers.create",
            {
                "name": "again",
                "flavor": "m1.small",
                "image": "cirros",
                "scheduler_hints": {"group": group_id},
            },
        )
    )["server"]
    placed = await wait_server(cloud.store, again["id"], settled)
    assert placed is not None and placed.vm_state == "active" and placed.host == active[0].host


async def test_anti_affinity_rule_allows_two_per_host(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    _, servers = await boot_group(cloud, admin, "anti-affinity", 6, max_server_per_host=2)
    assert all(s.vm_state == "active" for s in servers)
    per_host = {h: sum(1 for s in servers if s.host == h) for h in {s.host for s in servers}}
    assert sorted(per_host.values()) == [2, 2, 2]


async def test_affinity_keeps_concurrent_boots_together(
    cloud: Deployment, admin: ApiClient
) -> None:
    await make_flavor_image(admin)
    _, servers = await boot_group(cloud, admin, "affinity", 4)
    assert all(s.vm_state == "active" for s in servers)
    assert len({s.host for s in servers}) == 1
    assert await audit.audit(cloud.store) == []


async def test_soft_policies_change_the_weighing() -> None:
    a = host("big", ram=65536, vcpus=32, disk=1000)
    index = make_index(a, host("small"))
    assert (await scheduler(index).select(spec()))[0] == "big"
    near = spec(group=GroupSpec(id="g", policy="soft-affinity", member_hosts=["small"]))
    assert (await scheduler(index, soft_affinity_weight_multiplier=10.0).select(near))[0] == "small"
    # soft anti-affinity pushes away from the member's host
    index = make_index(a, host("small"))
    apart = spec(group=GroupSpec(id="g", policy="soft-anti-affinity", member_hosts=["big"]))
    assert (await scheduler(index, soft_anti_affinity_weight_multiplier=10.0).select(apart))[
        0
    ] == "small"
    # and unlike the hard policy, it never refuses
    crowded = spec(group=GroupSpec(id="g", policy="soft-anti-affinity", member_hosts=["big"]))
    assert len(await scheduler(make_index(a)).select(crowded)) == 1
    assert (
        await scheduler(make_index(a)).select(
            spec(group=GroupSpec(id="g", policy="anti-affinity", member_hosts=["big"]))
        )
        == []
    )


async def test_server_group_api(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    mine = (await demo("server_groups.create", {"name": "web", "policy": "soft-anti-affinity"}))[
        "server_group"
    ]
    assert mine["project"] == "DEMO" and mine["members"] == []
    theirs = (await admin("server_groups.create", {"name": "db", "policy": "affinity"}))[
        "server_group"
    ]
    assert [g["id"] for g in (await demo("server_groups.list"))["server_groups"]] == [mine["id"]]
    assert len((await admin("server_groups.list"))["server_groups"]) == 2
    with pytest.raises(errors.NotFound):
        await demo("server_groups.get", {"id": theirs["id"]})
    await make_flavor_image(admin)
    with pytest.raises(
        errors.BadRequest, match=f"scheduler_hints.group: server group {theirs['id']} not found"
    ):
        await demo(
            "servers.create",
            {
                "name": "x",
                "flavor": "m1.small",
                "image": "cirros",
                "scheduler_hints": {"group": theirs["id"]},
            },
        )
    await demo("server_groups.delete", {"id": mine["id"]})
    assert (await demo("server_groups.list"))["server_groups"] == []


async def test_server_group_cli(cloud: Deployment) -> None:
    from tests.test_cli import Cli, hvmesh

    cli = Cli(cloud)
    group = await cli.json("server-group", "create", "web", "--policy", "anti-affinity")
    await cli.ok("flavor", "create", "m1.small", "--vcpus", "1", "--ram", "256")
    await cli.ok("image", "create", "cirros")
    hosts = set()
    for name in ("w1", "w2"):
        server = await cli.json(
            "server",
            "create",
            name,
            "--flavor",
            "m1.small",
            "--image",
            "cirros",
            "--group",
            group["id"],
            "--wait",
        )
        hosts.add(server["host"])
    assert len(hosts) == 2
    listed = await cli.json("server-group", "list")
    assert [g["name"] for g in listed] == ["web"] and len(listed[0]["members"]) == 2
    apart = await cli.json(
        "server",
        "create",
        "x",
        "--flavor",
        "m1.small",
        "--image",
        "cirros",
        "--hint",
        f"different_host={server['id']}",
        "--wait",
    )
    assert apart["host"] != server["host"]
    code, _, err = await hvmesh(
        "server",
        "create",
        "y",
        "--flavor",
        "m1.small",
        "--image",
        "cirros",
        "--hint",
        "near=1",
        *cli.auth,
    )
    assert code == 1 and "expected same_host=ID or different_host=ID" in err
