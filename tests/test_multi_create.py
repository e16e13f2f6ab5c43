"""Multi-create (min_count/max_count): all placed, or at least min_count, or none at all."""

from __future__ import annotations

import re

import pytest

from hvmesh.core.ops import audit
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Server
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_all


def settled_or_gone(s: Server | None) -> bool:
    return s is None or settled(s)


async def create_in_group(admin: ApiClient, **counts: int) -> tuple[str, dict]:
    """An anti-affinity group (one server per host) and a multi-create into it."""
    group = (await admin("server_groups.create", {"name": "spread", "policy": "anti-affinity"}))[
        "server_group"
    ]
    reply = await admin(
        "servers.create",
        {
            "name": "web",
            "flavor": "m1.small",
            "image": "cirros",
            "scheduler_hints": {"group": group["id"]},
            **counts,
        },
    )
    return group["id"], reply


async def test_multi_create_places_every_server(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    group_id, reply = await create_in_group(admin, min_count=3, max_count=3)

    ids = [s["id"] for s in reply["servers"]]
    assert reply["server"]["id"] == ids[0]
    assert [s["name"] for s in reply["servers"]] == ["web-1", "web-2", "web-3"]
    assert {s["reservation_id"] for s in reply["servers"]} == {reply["reservation_id"]}
    servers = await wait_all(cloud.store, set(ids), settled)
    assert {s.vm_state for s in servers.values() if s} == {"active"}
    assert len({s.host for s in servers.values() if s}) == 3  # anti-affinity: one per host
    group = (await admin("server_groups.get", {"id": group_id}))["server_group"]
    assert sorted(group["members"]) == sorted(ids)
    assert await audit.audit(cloud.store) == []


async def test_multi_create_short_of_min_count_places_none(
    cloud: Deployment, admin: ApiClient
) -> None:
    await make_flavor_image(admin)
    # Three hosts, one member each: four can never all be placed.
    _, reply = await create_in_group(admin, min_count=4)

    ids = [s["id"] for s in reply["servers"]]
    servers = await wait_all(cloud.store, set(ids), settled)
    for s in servers.values():
        assert s is not None and s.vm_state == "error" and s.host is None
        assert s.fault is not None
        assert "not enough hosts available: 3 of min_count 4" in s.fault.message
    for name in ("fake-0001", "fake-0002", "fake-0003"):
        assert (await cloud.store.hosts.get(name)).value.allocations == {}
    assert await audit.audit(cloud.store) == []


async def test_multi_create_above_min_count_keeps_what_fits(
    cloud: Deployment, admin: ApiClient
) -> None:
    await make_flavor_image(admin)
    group_id, reply = await create_in_group(admin, min_count=2, max_count=5)

    ids = [s["id"] for s in reply["servers"]]
    servers = await wait_all(cloud.store, set(ids), settled_or_gone)
    active = [s for s in servers.values() if s is not None]
    assert len(active) == 3 and {s.vm_state for s in active} == {"active"}
    # The two that found no room were never created; the group forgets them too.
    assert sum(s is None for s in servers.values()) == 2
    group = (await admin("server_groups.get", {"id": group_id}))["server_group"]
    assert sorted(group["members"]) == sorted(s.id for s in active)
    assert await audit.audit(cloud.store) == []


async def test_multi_create_refuses_bad_counts(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    base = {"name": "vm", "flavor": "m1.small", "image": "cirros"}
    for counts, words in (
        ({"min_count": 3, "max_count": 2}, "max_count (2) is less than min_count (3)"),
        ({"min_count": 0}, "min_count"),
        ({"max_count": 1001}, "max_count"),
    ):
        with pytest.raises(errors.BadRequest, match=re.escape(words)):
            await admin("servers.create", {**base, **counts})
    assert (await admin("servers.list", {}))["servers"] == []
