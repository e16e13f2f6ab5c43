"""Host aggregates: availability zones as aggregates, aggregate filters, the admin API."""

from __future__ import annotations

import pytest

from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Aggregate
from hvmesh.schedulers.service import SchedulerService
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server
from tests.test_filters import flavor_with
from tests.test_units import host, make_index, scheduler, spec


def aggregate(name: str, hosts: list[str], **metadata: str) -> Aggregate:
    return Aggregate(id=name, name=name, hosts=hosts, metadata=metadata)


async def test_aggregate_instance_extra_specs_filter() -> None:
    index = make_index(host("big", ram=65536), host("fast"), host("faster"))
    index.apply_aggregate("ssd", aggregate("ssd", ["fast"], disk="ssd"))
    index.apply_aggregate("nvme", aggregate("nvme", ["faster"], disk="nvme,ssd"))
    filters = ["ComputeFilter", "AggregateInstanceExtraSpecsFilter"]
    s = spec()
    assert (await scheduler(index, enabled_filters=filters).select(s))[0] == "big"
    s.flavor = flavor_with(**{"aggregate_instance_extra_specs:disk": "ssd"})
    assert set(await scheduler(index, enabled_filters=filters).select(s)) == {"fast", "faster"}
    s.flavor.extra_specs["aggregate_instance_extra_specs:disk"] = "<or> nvme <or> hdd"
    assert await scheduler(index, enabled_filters=filters).select(s) == ["faster"]


async def test_aggregate_multi_tenancy_isolation() -> None:
    index = make_index(host("shared", ram=4096), host("private", ram=65536))
    index.apply_aggregate("iso", aggregate("iso", ["private"], filter_tenant_id="p1, p2"))
    filters = ["ComputeFilter", "AggregateMultiTenancyIsolation"]
    member, outsider = spec(), spec()
    member.project, outsider.project = "p2", "other"
    assert (await scheduler(index, enabled_filters=filters).select(member))[0] == "private"
    assert await scheduler(index, enabled_filters=filters).select(outsider) == ["shared"]
    index.apply_aggregate("iso", None)  # deleted: isolation lifts
    assert (await scheduler(index, enabled_filters=filters).select(outsider))[0] == "private"


async def test_availability_zone_from_an_aggregate(cloud: Deployment, admin: ApiClient) -> None:
    await make_flavor_image(admin)
    with pytest.raises(errors.BadRequest, match="availability_zone 'rack1' does not exist"):
        await admin(
            "servers.create",
            {"name": "x", "flavor": "m1.small", "image": "cirros", "availability_zone": "rack1"},
        )
    agg = (await admin("aggregates.create", {"name": "rack1", "availability_zone": "rack1"}))[
        "aggregate"
    ]
    await admin("aggregates.add_host", {"id": "rack1", "host": "fake-0002"})
    zones = {
        h["name"]: h["availability_zone"] for h in (await admin("hypervisors.list"))["hypervisors"]
    }
    assert zones == {"fake-0001": "nova", "fake-0002": "rack1", "fake-0003": "nova"}
    (sched,) = [c for c in cloud.components if isinstance(c, SchedulerService)]
    await sched.index.wait_for(lambda: sched.index.zone_of("fake-0002") == "rack1")

    body = {"name": "r", "flavor": "m1.small", "image": "cirros", "availability_zone": "rack1"}
    placed = await wait_server(
        cloud.store, (await admin("servers.create", body))["server"]["id"], settled
    )
    assert placed is not None and placed.host == "fake-0002"

    # A host has one zone: another zone aggregate cannot take it.
    await admin("aggregates.create", {"name": "rack2", "availability_zone": "rack2"})
    with pytest.raises(errors.Conflict, match="a host has one zone"):
        await admin("aggregates.add_host", {"id": "rack2", "host": "fake-0002"})
    with pytest.raises(errors.Conflict, match="still has hosts"):
        await admin("aggregates.delete", {"id": agg["id"]})
    await admin("aggregates.remove_host", {"id": "rack1", "host": "fake-0002"})
    await sched.index.wait_for(lambda: sched.index.zone_of("fake-0002") == "nova")
    await admin("aggregates.delete", {"name": "rack1"})
    assert [a["name"] for a in (await admin("aggregates.list"))["aggregates"]] == ["rack2"]


async def test_aggregate_api_rules(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await admin("aggregates.create", {"name": "gpu", "metadata": {"gpu": "a100", "tier": "gold"}})
    with pytest.raises(errors.Conflict):
        await admin("aggregates.create", {"name": "gpu"})
    with pytest.raises(errors.NotFound, match="host nowhere not found"):
        await admin("aggregates.add_host", {"id": "gpu", "host": "nowhere"})
    await admin("aggregates.add_host", {"id": "gpu", "host": "fake-0001"})
    with pytest.raises(errors.Conflict, match="already in aggregate gpu"):
        await admin("aggregates.add_host", {"id": "gpu", "host": "fake-0001"})
    updated = (
        await admin(
            "aggregates.set_metadata", {"id": "gpu", "metadata": {"tier": None, "gpu": "h100"}}
        )
    )["aggregate"]
    assert updated["metadata"] == {"gpu": "h100"} and updated["hosts"] == ["fake-0001"]
    with pytest.raises(errors.NotFound, match="is not in aggregate"):
        await admin("aggregates.remove_host", {"id": "gpu", "host": "fake-0002"})
    for endpoint, body in (
        ("aggregates.list", {}),
        ("aggregates.create", {"name": "mine"}),
        ("aggregates.get", {"name": "gpu"}),
    ):
        with pytest.raises(errors.Forbidden):
            await demo(endpoint, body)
