"""A plugin in its own installed package (tests/example_plugin) is found and changes decisions.

The package hvmesh-example-plugin is installed into the test environment by
tests/setup.sh and registers through the "hvmesh" entry-point group, as any third-party
plugin would; nothing here registers it.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
from hvmesh_example_plugin import plugin as example

from hvmesh.core.ops import audit
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.protocol.records import Flavor
from hvmesh.plugins import manager
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server

DIST = "hvmesh-example-plugin"
DEFAULT_FILTERS = [
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "CoreFilter",
    "RamFilter",
    "DiskFilter",
]


def _spec(extra_specs: dict[str, str]) -> RequestSpec:
    flavor = Flavor(id="f", name="f", vcpus=1, ram_mb=512, disk_gb=1, extra_specs=extra_specs)
    return RequestSpec(server_id="s", project="p", flavor=flavor)


def test_plugin_is_loaded_from_the_installed_distribution() -> None:
    eps = [
        ep
        for ep in importlib.metadata.entry_points(group=manager.ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.name == DIST
    ]
    assert [ep.value for ep in eps] == ["hvmesh_example_plugin.plugin"]
    module = eps[0].load()

    registry = manager.load()
    suffix_filter = registry.filters["NameSuffixFilter"]
    length_weigher = registry.weighers["NameLengthWeigher"]
    assert suffix_filter is module.NAME_SUFFIX_FILTER
    assert length_weigher is module.NAME_LENGTH_WEIGHER
    assert length_weigher.multiplier == 1.0
    # The plugin manager loaded that module from that distribution.
    info = next(p for p in registry.plugins if p.name == "hvmesh_example_plugin")
    assert (info.package, info.module, info.status) == (
        DIST,
        "hvmesh_example_plugin.plugin",
        "loaded",
    )
    assert info.registered == {"filters": ["NameSuffixFilter"], "weighers": ["NameLengthWeigher"]}


def test_mask_and_weights() -> None:
    names = np.array(["alpha-a", "beta-b", "c-b"], dtype=object)
    cols = {"name": names}
    suffix_filter = example.NAME_SUFFIX_FILTER
    assert suffix_filter.mask(cols, _spec({})) is None  # no extra spec: every host passes
    mask = suffix_filter.mask(cols, _spec({"example:host_suffix": "-b"}))
    assert mask.tolist() == [False, True, True]
    weights = example.NAME_LENGTH_WEIGHER.weigh(cols, _spec({}))
    assert weights.tolist() == [-7.0, -6.0, -3.0]


async def _boot(dep: Deployment, admin: ApiClient, name: str, flavor: str) -> str | None:
    created = (await admin("servers.create", {"name": name, "flavor": flavor, "image": "cirros"}))[
        "server"
    ]
    server = await wait_server(dep.store, created["id"], settled)
    assert server is not None and server.vm_state == "active", server
    return server.host


async def test_filter_changes_the_decision(deployment: Deployment, admin: ApiClient) -> None:
    cfg = deployment.config(scheduler={"enabled_filters": [*DEFAULT_FILTERS, "NameSuffixFilter"]})
    await deployment.start_core(cfg)
    # The RAM weigher prefers alpha-a (twice the memory); the filter will exclude it.
    await deployment.start_agent("alpha-a", deployment.config(fake={"memory_mb": 131072}))
    await deployment.start_agent("beta-b", deployment.config(fake={"memory_mb": 65536}))
    await make_flavor_image(admin)
    await admin(
        "flavors.create",
        {
            "name": "m1.small-b",
            "vcpus": 1,
            "ram_mb": 512,
            "disk_gb": 1,
            "extra_specs": {"example:host_suffix": "-b"},
        },
    )

    # On the untouched hosts the weighers alone would pick alpha-a; the filter says beta-b.
    assert await _boot(deployment, admin, "filtered", "m1.small-b") == "beta-b"
    # Control: the same scheduler, a flavor without the extra spec, goes to alpha-a.
    assert await _boot(deployment, admin, "control", "m1.small") == "alpha-a"
    assert await audit.audit(deployment.store) == []


async def test_weigher_changes_the_decision(deployment: Deployment, admin: ApiClient) -> None:
    await deployment.start_core(deployment.config(scheduler={"weighers": ["NameLengthWeigher"]}))
    await deployment.start_agent("longer-name")
    await deployment.start_agent("short")
    await make_flavor_image(admin)

    # Equal hosts: only the name length tells them apart. With the RAM weigher the
    # second server would spread to the other host; this weigher keeps choosing "short".
    assert await _boot(deployment, admin, "vm-1", "m1.small") == "short"
    assert await _boot(deployment, admin, "vm-2", "m1.small") == "short"
    assert await audit.audit(deployment.store) == []
