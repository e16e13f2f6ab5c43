"""Quotas, limits and usage through the API on fake hosts: defaults and overrides, every
quota refused with a 403 that names it and changes nothing, releases on delete, resize
and shelve-offload, multi-create's partial fit, no overshoot under concurrent creates
through two API processes, and the usage report."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from hvmesh.core.api.service import ApiService
from hvmesh.core.bus import connection
from hvmesh.core.bus import micro as bus
from hvmesh.core.config import QuotaSection
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.quota_records import UsageRecord
from hvmesh.core.protocol.records import Server
from hvmesh.core.state import quotas
from tests.support import (
    ApiClient,
    Cli,
    Deployment,
    act,
    boot,
    gone,
    idle,
    make_flavor_image,
    resting,
    wait_all,
    wait_server,
)

DEFAULTS = {
    "instances": 10,
    "cores": 20,
    "ram": 51200,
    "server_groups": 10,
    "server_group_members": 10,
    "key_pairs": 100,
    "metadata_items": 128,
}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl q"


async def setup(admin: ApiClient) -> None:
    await make_flavor_image(admin)  # m1.small: 1 vCPU, 512 MB
    await admin("flavors.create", {"name": "m1.large", "vcpus": 2, "ram_mb": 1024, "disk_gb": 2})


async def set_quota(admin: ApiClient, project: str = "DEMO", **limits: Any) -> dict:
    return (await admin("quotas.set", {"project": project, **limits}))["quota_set"]


async def used(client: ApiClient) -> dict[str, int]:
    a = (await client("limits.show"))["limits"]["absolute"]
    return {
        "instances": a["totalInstancesUsed"],
        "cores": a["totalCoresUsed"],
        "ram": a["totalRAMUsed"],
        "server_groups": a["totalServerGroupsUsed"],
    }


async def holds(dep: Deployment, client: ApiClient, **want: int) -> None:
    """Wait until the project's usage record comes to `want` (it is written after the
    server record a test waits on), then check limits.show says so too."""
    assert dep.store is not None
    bucket = dep.store.quota_usage
    watcher = await bucket.kv.watch("DEMO")
    last: dict[str, int] = {}
    try:
        async with asyncio.timeout(60):
            seen = False
            async for e in watcher:
                if e is not None:  # a record with no holders left is deleted
                    seen = True
                    live = e.value and e.operation is None
                    last = quotas.totals(bucket.decode(e.value).holdings) if live else {}
                elif not seen:  # the end marker may come before the record on its way
                    entry = await bucket.get("DEMO")
                    last = quotas.totals(entry.value.holdings) if entry is not None else {}
                if all(last.get(k, 0) == v for k, v in want.items()):
                    break
    except TimeoutError:
        raise AssertionError(f"usage never came to {want}; last: {last}") from None
    finally:
        await watcher.stop()
    assert await used(client) == {**dict.fromkeys(want, 0), **want}


async def state(dep: Deployment) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    assert dep.store is not None
    st = dep.store
    return (
        sorted((s.id, s.vm_state, s.task_state, s.flavor.name) for s in await st.servers.values()),
        sorted(msg_key(u) for u in await st.quota_usage.values()),
        sorted(g.id for g in await st.server_groups.values()),
        sorted((g.id, tuple(g.members)) for g in await st.server_groups.values()),
        sorted(k.id for k in await st.keypairs.values()),
        sorted(p.id for p in await st.ports.values()),
    )


def msg_key(u: Any) -> tuple[str, tuple[tuple[str, tuple[tuple[str, int], ...]], ...]]:
    return u.project, tuple(
        sorted((k, tuple(sorted(h.amounts.items()))) for k, h in u.holdings.items())
    )


async def refused(dep: Deployment, call: Any, text: str) -> None:
    """`call` is a 403 whose message is `text`, and it changed nothing."""
    before = await state(dep)
    with pytest.raises(errors.Forbidden) as exc:
        await call
    assert exc.value.message == text
    assert await state(dep) == before


# --- defaults and overrides -------------------------------------------------------------------


async def test_defaults_and_overrides(
    deployment: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    assert QuotaSection().defaults() == DEFAULTS  # Nova's
    quota = {**DEFAULTS, "instances": 7, "resource_classes": ["CUSTOM_GPU=2"]}
    cfg = deployment.config(quota=quota)
    await deployment.start_core(cfg, fake_hosts=1)
    defaults = (await demo("quotas.defaults"))["quota_set"]
    assert defaults == {"id": "defaults", **DEFAULTS, "instances": 7, "CUSTOM_GPU": 2}
    own = (await demo("quotas.show"))["quota_set"]
    assert own == {**defaults, "id": "DEMO"}
    # A member reads only its own project's quotas and sets none.
    with pytest.raises(errors.Forbidden, match="compute:quotas:show:other_project"):
        await demo("quotas.show", {"project": "admin"})
    with pytest.raises(errors.Forbidden, match="compute:quotas:set"):
        await demo("quotas.set", {"project": "DEMO", "cores": 100})
    # An admin's override changes that project only; -1 is unlimited.
    shown = await set_quota(admin, cores=4, ram=-1, resources={"CUSTOM_GPU": 5, "CUSTOM_FPGA": 1})
    assert shown == {**own, "cores": 4, "ram": -1, "CUSTOM_GPU": 5, "CUSTOM_FPGA": 1}
    assert (await demo("quotas.show"))["quota_set"] == shown
    assert (await admin("quotas.show", {"project": "DEMO"}))["quota_set"] == shown
    assert (await admin("quotas.show"))["quota_set"] == {**defaults, "id": "admin"}
    limits = (await demo("limits.show"))["limits"]
    assert limits["absolute"]["maxTotalCores"] == 4
    assert limits["absolute"]["maxTotalInstances"] == 7
    assert limits["absolute"]["maxTotalRAMSize"] == -1
    assert limits["resources"]["CUSTOM_FPGA"] == {"limit": 1, "in_use": 0}
    # A later override keeps the earlier ones.
    assert (await set_quota(admin, instances=3))["cores"] == 4
    with pytest.raises(errors.BadRequest, match=re.escape("$.instances")):
        await set_quota(admin, instances=-2)
    with pytest.raises(errors.BadRequest, match=re.escape("$.resources")):
        await set_quota(admin, resources={"GPU": 1})
    with pytest.raises(errors.BadRequest, match="at least one limit"):
        await set_quota(admin)
    # Deleting the overrides: the defaults again, a tenant may not.
    with pytest.raises(errors.Forbidden, match="compute:quotas:delete"):
        await demo("quotas.delete", {"project": "DEMO"})
    reverted = (await admin("quotas.delete", {"project": "DEMO"}))["quota_set"]
    assert reverted == own and (await demo("quotas.show"))["quota_set"] == own
    assert (await admin("quotas.delete", {"project": "DEMO"}))["quota_set"] == own  # again: same


# --- every quota, refused -------------------------------------------------------------------


async def test_exceeding_each_quota_is_a_403_that_changes_nothing(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await setup(admin)
    small = {"name": "vm", "flavor": "m1.small", "image": "cirros"}

    await set_quota(admin, instances=1)
    await boot(cloud, demo, "one")
    await refused(
        cloud,
        demo("servers.create", small),
        "Quota exceeded for instances: Requested 1, but already used 1 of 1 instances",
    )
    await set_quota(admin, instances=10, cores=2)
    await refused(
        cloud,
        demo("servers.create", {**small, "flavor": "m1.large"}),
        "Quota exceeded for cores: Requested 2, but already used 1 of 2 cores",
    )
    await set_quota(admin, cores=10, ram=1000)
    await refused(
        cloud,
        demo("servers.create", small),
        "Quota exceeded for ram: Requested 512, but already used 512 of 1000 ram",
    )
    await set_quota(admin, ram=-1, metadata_items=1)
    await refused(
        cloud,
        demo("servers.create", {**small, "metadata": {"a": "1", "b": "2"}}),
        "Quota exceeded for metadata_items: Requested 2, but the limit is 1 metadata_items "
        "per server",
    )

    # Server groups, and the servers one group may hold.
    await set_quota(admin, server_groups=1, server_group_members=1)
    group = (await demo("server_groups.create", {"name": "g", "policy": "anti-affinity"}))[
        "server_group"
    ]
    await refused(
        cloud,
        demo("server_groups.create", {"name": "g2", "policy": "affinity"}),
        "Quota exceeded for server_groups: Requested 1, but already used 1 of 1 server_groups",
    )
    in_group = {**small, "scheduler_hints": {"group": group["id"]}}
    await boot(cloud, demo, "member", scheduler_hints={"group": group["id"]})
    await refused(
        cloud,
        demo("servers.create", in_group),
        "Quota exceeded for server_group_members: Requested 1, but already used 1 of 1 "
        "server_group_members",
    )

    # Key pairs count per user.
    await set_quota(admin, key_pairs=1)
    await demo("keypairs.create", {"name": "k1", "public_key": KEY})
    await refused(
        cloud,
        demo("keypairs.create", {"name": "k2", "public_key": KEY}),
        "Quota exceeded for key_pairs: Requested 1, but already used 1 of 1 key_pairs",
    )
    await admin("keypairs.create", {"name": "k1", "public_key": KEY})  # another project's

    # A resource class a flavor asks for; the server counts even when its build fails.
    await admin(
        "flavors.create",
        {
            "name": "gpu",
            "vcpus": 1,
            "ram_mb": 256,
            "disk_gb": 1,
            "extra_specs": {"resources:CUSTOM_GPU": "1"},
        },
    )
    await set_quota(admin, resources={"CUSTOM_GPU": 1})
    made = (await demo("servers.create", {**small, "flavor": "gpu"}))["server"]
    errored = await wait_server(cloud.store, made["id"], resting(S.ERROR))  # no host has GPUs
    assert errored is not None
    await refused(
        cloud,
        demo("servers.create", {**small, "flavor": "gpu"}),
        "Quota exceeded for CUSTOM_GPU: Requested 1, but already used 1 of 1 CUSTOM_GPU",
    )
    limits = (await demo("limits.show"))["limits"]
    assert limits["resources"]["CUSTOM_GPU"] == {"limit": 1, "in_use": 1}
    assert await used(demo) == {"instances": 3, "cores": 3, "ram": 1280, "server_groups": 1}

    # Deleting gives it back: the group, the key pair, the servers.
    await demo("keypairs.delete", {"name": "k1"})
    await demo("keypairs.create", {"name": "k2", "public_key": KEY})
    servers = [s for s in await cloud.store.servers.values() if s.project == "DEMO"]
    for s in servers:
        await demo("servers.delete", {"id": s.id})
    await wait_all(cloud.store, {s.id for s in servers}, gone)
    await demo("server_groups.delete", {"id": group["id"]})
    await holds(cloud, demo, instances=0, cores=0, ram=0, server_groups=0)
    await demo("server_groups.create", {"name": "g2", "policy": "affinity"})


# --- resize and shelve -------------------------------------------------------------------------


async def test_resize_counts_the_growth_and_confirm_or_revert_settles_it(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await setup(admin)
    s = await boot(cloud, demo)
    await set_quota(admin, cores=1)
    await refused(
        cloud,
        act(demo, s.id, "resize", flavor="m1.large"),
        "Quota exceeded for cores: Requested 1, but already used 1 of 1 cores",
    )
    await set_quota(admin, cores=2)
    await act(demo, s.id, "resize", flavor="m1.large")
    assert (await used(demo))["cores"] == 2  # the larger flavor, at once
    resized = await wait_server(cloud.store, s.id, idle)
    assert resized is not None and resized.vm_state == S.RESIZED
    await refused(
        cloud,
        demo("servers.create", {"name": "vm2", "flavor": "m1.small", "image": "cirros"}),
        "Quota exceeded for cores: Requested 1, but already used 2 of 2 cores",
    )
    await act(demo, s.id, "revert-resize")
    reverted = await wait_server(cloud.store, s.id, idle)
    assert reverted is not None and reverted.flavor.name == "m1.small"
    await holds(cloud, demo, instances=1, cores=1, ram=512, server_groups=0)

    await act(demo, s.id, "resize", flavor="m1.large")
    await wait_server(cloud.store, s.id, resting(S.RESIZED))
    await act(demo, s.id, "confirm-resize")
    confirmed = await wait_server(cloud.store, s.id, resting(S.ACTIVE))
    assert confirmed is not None and confirmed.flavor.name == "m1.large"
    await holds(cloud, demo, instances=1, cores=2, ram=1024, server_groups=0)


async def test_shelve_offload_keeps_the_instance_and_unshelve_counts_again(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await setup(admin)
    s = await boot(cloud, demo)
    await act(demo, s.id, "shelve")
    await wait_server(cloud.store, s.id, resting(S.SHELVED_OFFLOADED))
    await holds(cloud, demo, instances=1, cores=0, ram=0, server_groups=0)
    await set_quota(admin, cores=1)
    other = await boot(cloud, demo, "other")
    await refused(
        cloud,
        act(demo, s.id, "unshelve"),
        "Quota exceeded for cores: Requested 1, but already used 1 of 1 cores",
    )
    await demo("servers.delete", {"id": other.id})
    await wait_server(cloud.store, other.id, gone)
    await holds(cloud, demo, instances=1, cores=0, ram=0, server_groups=0)
    await act(demo, s.id, "unshelve")
    await wait_server(cloud.store, s.id, resting(S.ACTIVE))
    await holds(cloud, demo, instances=1, cores=1, ram=512, server_groups=0)


# --- multi-create ---------------------------------------------------------------------------


async def test_multi_create_takes_as_many_as_fit_at_least_min_count(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await setup(admin)
    await set_quota(admin, instances=4)
    await boot(cloud, demo)
    body = {"name": "many", "flavor": "m1.small", "image": "cirros"}
    await refused(
        cloud,
        demo("servers.create", {**body, "min_count": 4, "max_count": 6}),
        "Quota exceeded for instances: Requested 4, but already used 1 of 4 instances",
    )
    reply = await demo("servers.create", {**body, "min_count": 2, "max_count": 6})
    assert len(reply["servers"]) == 3
    assert (await used(demo))["instances"] == 4
    await wait_all(cloud.store, {s["id"] for s in reply["servers"]}, resting(S.ACTIVE))


# --- concurrency ------------------------------------------------------------------------------


async def test_no_overshoot_with_100_concurrent_creates_through_two_api_processes(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await setup(admin)
    nc = await connection.connect(cloud.config().nats, "test-api-2")
    cloud.connections.append(nc)
    await cloud.start(ApiService(nc, cloud.config()))
    await set_quota(admin, instances=10)
    body = {"flavor": "m1.small", "image": "cirros"}

    async def create(i: int) -> str | None:
        try:
            reply = await bus.call(
                demo.nc, subjects.api("servers", "create"), {**body, "name": f"c{i}"}, timeout=120
            )
        except errors.Forbidden as exc:
            assert exc.message.startswith("Quota exceeded for instances: Requested 1, but")
            return None
        return str(reply["server"]["id"])

    results = await asyncio.gather(*(create(i) for i in range(100)))
    accepted = [r for r in results if r is not None]
    assert len(accepted) == 10
    assert (await used(demo))["instances"] == 10
    assert {s.id for s in await cloud.store.servers.values() if s.project == "DEMO"} == set(
        accepted
    )
    await wait_all(cloud.store, set(accepted), resting(S.ACTIVE))
    await asyncio.gather(*(demo("servers.delete", {"id": i}) for i in accepted))
    await wait_all(cloud.store, set(accepted), gone)
    await holds(cloud, demo, instances=0, cores=0, ram=0, server_groups=0)


# --- usage --------------------------------------------------------------------------------------


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def test_usage_report(cloud: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await setup(admin)
    assert cloud.store is not None
    # A server deleted long ago, as the ledger keeps it: 2 vCPUs, 1 GB, 20 GB, 6 hours.
    old = UsageRecord(
        server_id="old-1",
        name="old",
        project="DEMO",
        user="demo",
        flavor="m1.old",
        vcpus=2,
        ram_mb=1024,
        disk_gb=20,
        started_at=at("2025-01-01T04:00:00"),
        ended_at=at("2025-01-01T10:00:00"),
    )
    await cloud.store.usage_ledger.put("DEMO.old-1", old)
    window = {"start": "2025-01-01T00:00:00", "end": "2025-01-01T08:00:00"}
    report = (await demo("usage.show", window))["tenant_usage"]
    assert report["tenant_id"] == "DEMO"
    assert (report["start"], report["stop"]) == (
        "2025-01-01T00:00:00.000000",
        "2025-01-01T08:00:00.000000",
    )
    assert [u["instance_id"] for u in report["server_usages"]] == ["old-1"]
    assert report["total_hours"] == pytest.approx(4.0)  # 04:00 to the window's end
    assert report["total_vcpus_usage"] == pytest.approx(8.0)
    assert report["total_memory_mb_usage"] == pytest.approx(4096.0)
    assert report["total_local_gb_usage"] == pytest.approx(80.0)
    assert report["server_usages"][0]["state"] == "terminated"
    # Another project sees none of it; an admin may ask for it.
    assert (await admin("usage.show", window))["tenant_usage"]["server_usages"] == []
    by_admin = await admin("usage.show", {**window, "project": "DEMO"})
    assert by_admin["tenant_usage"]["total_vcpus_usage"] == pytest.approx(8.0)
    with pytest.raises(errors.Forbidden):
        await demo("usage.show", {**window, "project": "admin"})
    with pytest.raises(errors.BadRequest, match="start"):
        await demo("usage.show", {"start": "yesterday"})
    with pytest.raises(errors.BadRequest, match="must be before"):
        await demo("usage.show", {"start": "2025-01-02", "end": "2025-01-01"})

    # A live server counts from its launch; once deleted, the ledger keeps its run.
    s: Server = await boot(cloud, demo)
    assert s.launched_at is not None
    live = (await demo("usage.show"))["tenant_usage"]["server_usages"]
    assert [(u["instance_id"], u["state"], u["ended_at"]) for u in live] == [(s.id, "active", None)]
    await demo("servers.delete", {"id": s.id})
    await wait_server(cloud.store, s.id, gone)
    ran = (await demo("usage.show"))["tenant_usage"]["server_usages"]
    assert [(u["instance_id"], u["state"], u["vcpus"]) for u in ran] == [(s.id, "terminated", 1)]
    assert ran[0]["hours"] > 0 and ran[0]["ended_at"] is not None


# --- the CLI ------------------------------------------------------------------------------------


async def test_cli_quota_limits_usage(cloud: Deployment, admin: ApiClient) -> None:
    cli = Cli(cloud)
    # The configured defaults (unlimited in tests: support.fast_config).
    assert (await cli.json("quota", "show", "--default"))["instances"] == -1
    shown = await cli.json("quota", "set", "DEMO", "--cores", "4", "--key-pairs", "3",
                           "--properties", "5", "--resource", "CUSTOM_GPU=2")  # fmt: skip
    assert (shown["id"], shown["cores"], shown["key_pairs"]) == ("DEMO", 4, 3)
    assert (shown["metadata_items"], shown["CUSTOM_GPU"]) == (5, 2)
    assert (await cli.json("quota", "show", "DEMO"))["cores"] == 4
    table = await cli.ok("quota", "show", "DEMO")
    assert re.search(r"\| cores\s+\| 4\s+\|", table), table
    assert await cli.ok("quota", "show", "DEMO", "-c", "cores", "-f", "value") == "4\n"
    limits = await cli.json("limits", "show", "--absolute", "--project", "DEMO")
    assert {"name": "maxTotalCores", "value": 4} in limits
    assert {"name": "totalCoresUsed", "value": 0} in limits
    assert {"name": "maxTotalCUSTOM_GPU", "value": 2} in limits
    usage = await cli.json("usage", "show", "--start", "2025-01-01", "--end", "2025-01-02")
    assert usage == {
        "project": "admin",
        "servers": 0,
        "ram_mb_hours": 0,
        "cpu_hours": 0,
        "disk_gb_hours": 0,
    }
    out = await cli.ok("usage", "show", "--start", "2025-01-01", "--end", "2025-01-02")
    assert out.startswith("Usage from 2025-01-01 to 2025-01-02 on project admin:")
    error = await cli.fails("quota", "set", "DEMO", "--cores", "-5")
    assert "$.cores" in error
    error = await cli.fails("quota", "set", "DEMO", "--resource", "CUSTOM_GPU")
    assert "is not CLASS=N" in error
