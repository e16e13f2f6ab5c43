"""Each built-in filter and weigher, shown changing a decision of the filter scheduler."""

from __future__ import annotations

import pytest

from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Flavor, SchedulerHints
from hvmesh.plugins.extra_specs import matches
from hvmesh.schedulers.best_fit import BestFitScheduler
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server
from tests.test_units import host, make_index, scheduler, spec


def flavor_with(**extra_specs: str) -> Flavor:
    return Flavor(id="f", name="f", vcpus=1, ram_mb=1024, disk_gb=10, extra_specs=extra_specs)


@pytest.mark.parametrize(
    ("value", "requirement", "expected"),
    [
        ("kvm", "kvm", True),
        ("kvm", "s== kvm", True),
        ("kvm", "s!= kvm", False),
        ("7.0", ">= 6.5", True),
        ("32", "< 16", False),
        ("x86_64", "<in> 86", True),
        ("qemu", "<or> kvm <or> qemu", True),
        ("abc", ">= 1", False),
    ],
)
def test_extra_spec_operators(value: str, requirement: str, expected: bool) -> None:
    assert matches(value, requirement) is expected


async def test_compute_capabilities_filter() -> None:
    index = make_index(
        host("big-fake", ram=65536, hypervisor_type="fake"),
        host("kvm", hypervisor_type="kvm", hypervisor_version="8.0"),
    )
    assert (await scheduler(index).select(spec()))[0] == "big-fake"
    s = spec()
    s.flavor = flavor_with(**{"capabilities:hypervisor_type": "s== kvm"})
    assert await scheduler(index).select(s) == ["kvm"]
    s.flavor = flavor_with(**{"capabilities:hypervisor_version": ">= 9"})
    assert await scheduler(index).select(s) == []
    s.flavor = flavor_with(**{"capabilities:vcpus": ">= 8", "capabilities:memory_mb": "<= 8192"})
    assert await scheduler(index).select(s) == ["kvm"]


async def test_image_properties_filter() -> None:
    index = make_index(
        host("x86", ram=65536, cpu_arch="x86_64"),
        host("arm", cpu_arch="aarch64", hypervisor_type="kvm"),
    )
    assert (await scheduler(index).select(spec()))[0] == "x86"
    assert await scheduler(index).select(spec(image_properties={"hw_architecture": "aarch64"})) == [
        "arm"
    ]
    assert await scheduler(index).select(spec(image_properties={"img_hv_type": "kvm"})) == ["arm"]
    assert await scheduler(index).select(spec(image_properties={"img_hv_type": "xen"})) == []


async def test_traits_filter_required_and_forbidden() -> None:
    index = make_index(
        host("plain", ram=65536),
        host("avx", traits=["HW_CPU_X86_AVX2"]),
        host("gpu", traits=["HW_CPU_X86_AVX2", "CUSTOM_GPU"]),
    )
    assert (await scheduler(index).select(spec()))[0] == "plain"
    s = spec()
    s.flavor = flavor_with(**{"trait:HW_CPU_X86_AVX2": "required", "trait:CUSTOM_GPU": "forbidden"})
    assert await scheduler(index).select(s) == ["avx"]
    assert await scheduler(index).select(
        spec(image_properties={"trait:CUSTOM_GPU": "required"})
    ) == ["gpu"]
    # A trait change on a host reaches the filter.
    from hvmesh.core.state.store import Entry

    moved = host("plain", ram=65536, traits=["CUSTOM_GPU"])
    index.apply_host(Entry(key="plain", value=moved, revision=99), "plain", 99)
    assert set(
        await scheduler(index).select(spec(image_properties={"trait:CUSTOM_GPU": "required"}))
    ) == {"gpu", "plain"}


async def test_num_instances_filter() -> None:
    busy = host("busy", ram=65536)
    busy.allocations = {f"s{i}": {"VCPU": 0} for i in range(3)}
    index = make_index(busy, host("quiet"))
    filters = ["ComputeFilter", "NumInstancesFilter"]
    assert (await scheduler(index, enabled_filters=filters).select(spec()))[0] == "busy"
    assert await scheduler(index, enabled_filters=filters, max_instances_per_host=3).select(
        spec()
    ) == ["quiet"]


async def test_same_host_and_different_host_filters() -> None:
    a = host("a", ram=65536)
    a.allocations = {"friend": {"MEMORY_MB": 1}}
    index = make_index(a, host("b"), host("c"))
    assert (await scheduler(index).select(spec()))[0] == "a"
    assert set(
        await scheduler(index).select(
            spec(scheduler_hints=SchedulerHints(different_host=["friend"]))
        )
    ) == {"b", "c"}
    assert await scheduler(index).select(
        spec(scheduler_hints=SchedulerHints(same_host=["friend"]))
    ) == ["a"]
    assert (
        await scheduler(index).select(spec(scheduler_hints=SchedulerHints(same_host=["unknown"])))
        == []
    )


async def test_disk_weigher() -> None:
    index = make_index(host("small-disk", disk=100), host("big-disk", disk=1000))
    only_disk = {"ram_weight_multiplier": 0.0, "cpu_weight_multiplier": 0.0}
    assert (await scheduler(index, **only_disk).select(spec()))[0] == "big-disk"
    assert (await scheduler(index, **only_disk, disk_weight_multiplier=-1.0).select(spec()))[
        0
    ] == "small-disk"


async def test_num_instances_weigher() -> None:
    busy = host("busy")
    busy.allocations = {"x": {"VCPU": 0}, "y": {"VCPU": 0}}
    index = make_index(busy, host("idle"))
    only = {
        "ram_weight_multiplier": 0.0,
        "cpu_weight_multiplier": 0.0,
        "disk_weight_multiplier": 0.0,
    }
    assert (await scheduler(index, **only, num_instances_weight_multiplier=1.0).select(spec()))[
        0
    ] == "busy"
    assert (await scheduler(index, **only, num_instances_weight_multiplier=-1.0).select(spec()))[
        0
    ] == "idle"


async def test_hints_and_image_properties_reach_the_scheduler(
    deployment: Deployment, admin: ApiClient
) -> None:
    """End to end: a scheduler hint and an image property decide where servers land."""
    await deployment.start_core()
    await deployment.start_agent("x86-big", deployment.config(fake={"memory_mb": 131072}))
    await deployment.start_agent("arm", deployment.config(fake={"cpu_arch": "aarch64"}))
    await deployment.start_agent("x86-small", deployment.config(fake={"memory_mb": 32768}))
    await make_flavor_image(admin)
    await admin("images.create", {"name": "arm-os", "properties": {"hw_architecture": "aarch64"}})

    first = (await admin("servers.create", {"name": "a", "flavor": "m1.small", "image": "cirros"}))[
        "server"
    ]
    assert (await wait_server(deployment.store, first["id"], settled)).host == "x86-big"
    arm = (await admin("servers.create", {"name": "b", "flavor": "m1.small", "image": "arm-os"}))[
        "server"
    ]
    assert (await wait_server(deployment.store, arm["id"], settled)).host == "arm"
    body = {
        "name": "c",
        "flavor": "m1.small",
        "image": "cirros",
        "scheduler_hints": {"different_host": [first["id"]]},
    }
    apart = (await admin("servers.create", body))["server"]
    assert (await wait_server(deployment.store, apart["id"], settled)).host != "x86-big"
    with pytest.raises(errors.BadRequest, match="unknown field `near`"):
        await admin("servers.create", {**body, "scheduler_hints": {"near": "x"}})


async def test_best_fit_scheduler_packs_where_the_filter_scheduler_spreads(
    deployment: Deployment, admin: ApiClient
) -> None:
    """The scheduler is a plugin: `[scheduler] driver = best_fit` changes where servers go."""
    index = make_index(host("roomy", ram=65536), host("snug", ram=4096), host("middle", ram=16384))
    assert (await scheduler(index).select(spec(ram=3072)))[0] == "roomy"
    packer = BestFitScheduler(scheduler(index).ctx)
    assert await packer.select(spec(ram=3072)) == ["snug", "middle", "roomy"]
    assert await packer.select(spec(ram=8192)) == ["middle", "roomy"]

    cfg = deployment.config(scheduler={"driver": "best_fit"})
    await deployment.start_core(cfg)
    for name, ram in (("roomy", 65536), ("snug", 4096)):
        await deployment.start_agent(name, deployment.config(fake={"memory_mb": ram}))
    await make_flavor_image(admin, ram=3072)
    first = (
        await admin("servers.create", {"name": "p1", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    assert (await wait_server(deployment.store, first["id"], settled)).host == "snug"
    second = (
        await admin("servers.create", {"name": "p2", "flavor": "m1.small", "image": "cirros"})
    )["server"]
    assert (
        await wait_server(deployment.store, second["id"], settled)
    ).host == "roomy"  # snug is full


async def test_build_failure_weigher_and_its_reset() -> None:
    bad = host("bad", ram=65536)
    bad.failed_builds = 2
    index = make_index(bad, host("good"))
    assert (await scheduler(index).select(spec()))[0] == "good"
    assert (await scheduler(index, build_failure_weight_multiplier=0.0).select(spec()))[0] == "bad"
    from hvmesh.core.conductor.build import _build_finished

    bad.in_progress = ["s1", "s2"]
    reset = _build_finished(bad, "s1")
    assert reset is not None and reset.failed_builds == 0 and reset.in_progress == ["s2"]
    assert _build_finished(host("clean"), "s1") is None  # nothing to write


async def test_io_ops_filter_and_weigher() -> None:
    busy = host("busy", ram=65536)
    busy.in_progress = ["a", "b", "c"]
    index = make_index(busy, host("calm"))
    assert (await scheduler(index, io_ops_weight_multiplier=0.0).select(spec()))[0] == "busy"
    # negative multipliers prefer fewer builds in progress; here enough to outweigh RAM
    assert (await scheduler(index, io_ops_weight_multiplier=-2.0).select(spec()))[0] == "calm"
    filters = ["ComputeFilter", "IoOpsFilter"]
    assert await scheduler(index, enabled_filters=filters, max_io_ops_per_host=3).select(
        spec()
    ) == ["calm"]
