"""PCI devices and custom resource classes: requested by flavors, claimed like RAM."""

from __future__ import annotations

import pytest

from hvmesh.core.ops import audit
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Flavor, Inventory
from hvmesh.core.protocol.resources import custom_resources, pci_class
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server
from tests.test_filters import flavor_with
from tests.test_units import host, make_index, scheduler, spec


def test_flavor_resources_include_devices_and_custom_classes() -> None:
    flavor = Flavor(
        id="f",
        name="f",
        vcpus=2,
        ram_mb=1024,
        disk_gb=5,
        extra_specs={"pci_passthrough:alias": "gpu:2, nic", "resources:CUSTOM_FPGA": "1"},
    )
    assert flavor.resources() == {
        "VCPU": 2,
        "MEMORY_MB": 1024,
        "DISK_GB": 5,
        "CUSTOM_PCI_GPU": 2,
        "CUSTOM_PCI_NIC": 1,
        "CUSTOM_FPGA": 1,
    }
    assert pci_class("a100-80g") == "CUSTOM_PCI_A100_80G"
    with pytest.raises(ValueError, match="'gpu:x' is not NAME"):
        custom_resources({"pci_passthrough:alias": "gpu:x"})


async def test_device_filters_change_the_decision() -> None:
    plain = host("plain", ram=65536)
    gpu = host("gpu")
    gpu.inventories[pci_class("gpu")] = Inventory(total=2, max_unit=2)
    fpga = host("fpga")
    fpga.inventories["CUSTOM_FPGA"] = Inventory(total=1)
    index = make_index(plain, gpu, fpga)
    assert (await scheduler(index).select(spec()))[0] == "plain"
    s = spec()
    s.flavor = flavor_with(**{"pci_passthrough:alias": "gpu:2"})
    assert await scheduler(index).select(s) == ["gpu"]
    s.flavor.extra_specs["pci_passthrough:alias"] = "gpu:3"
    assert await scheduler(index).select(s) == []
    s.flavor.extra_specs = {"resources:CUSTOM_FPGA": "1"}
    assert await scheduler(index).select(s) == ["fpga"]


async def test_gpus_are_claimed_until_none_is_left(
    deployment: Deployment, admin: ApiClient
) -> None:
    await deployment.start_core()
    await deployment.start_agent("big", deployment.config(fake={"memory_mb": 131072}))
    await deployment.start_agent("gpu-host", deployment.config(fake={"pci_devices": ["gpu:2"]}))
    await make_flavor_image(admin)
    await admin(
        "flavors.create",
        {
            "name": "g1",
            "vcpus": 1,
            "ram_mb": 512,
            "extra_specs": {"pci_passthrough:alias": "gpu:1"},
        },
    )
    with pytest.raises(errors.BadRequest, match="extra_specs: pci_passthrough:alias"):
        await admin(
            "flavors.create",
            {
                "name": "bad",
                "vcpus": 1,
                "ram_mb": 512,
                "extra_specs": {"pci_passthrough:alias": "gpu:0"},
            },
        )

    placed = []
    for name in ("a", "b", "c"):
        sid = (await admin("servers.create", {"name": name, "flavor": "g1", "image": "cirros"}))[
            "server"
        ]["id"]
        placed.append(await wait_server(deployment.store, sid, settled))
    assert [s.host for s in placed[:2]] == ["gpu-host", "gpu-host"]
    assert placed[2].vm_state == "error" and placed[2].fault.message.startswith("No valid host")
    record = (await deployment.store.hosts.get("gpu-host")).value
    assert record.used(pci_class("gpu")) == 2
    assert await audit.audit(deployment.store) == []
    # A server without devices still prefers the big host.
    plain = (await admin("servers.create", {"name": "p", "flavor": "m1.small", "image": "cirros"}))[
        "server"
    ]["id"]
    assert (await wait_server(deployment.store, plain, settled)).host == "big"
