"""The Ironic driver against a real standalone Ironic (tests/ironic_peer.py), and the bare-metal flavor's resources.

The driver is used as the agent runtime uses it; what it did is checked in Ironic
through its own HTTP API.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from hvmesh.agents.driver import DriverError
from hvmesh.agents.ironic import nodes
from hvmesh.agents.ironic.client import connect
from hvmesh.agents.ironic.driver import IronicDriver
from hvmesh.core.config import Config
from hvmesh.core.protocol import errors, states
from hvmesh.core.protocol.records import Flavor, Server
from tests.drivers.ironic_peer import GOLD_SPECS, bm_image, gold_flavor, ironic_config
from tests.drivers.peers import ready
from tests.ironic_peer import Ironic
from tests.support import ApiClient, Deployment, until


def server(flavor: Flavor | None = None, host: str = "") -> Server:
    return Server(
        id="6f0c1d56-31a5-4d8e-9f34-7d2b7c0e1a11", name="metal", project="demo", user="alice",
        flavor=flavor or gold_flavor(), image_id="img-bm", image_name="bm-image",
        vm_state="building", host=host,
    )  # fmt: skip


def test_a_baremetal_flavor_asks_for_one_unit_and_no_standard_resources() -> None:
    assert gold_flavor().resources() == {
        "VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0, "CUSTOM_BAREMETAL_GOLD": 1,
    }  # fmt: skip
    plain = Flavor(id="m1", name="m1", vcpus=2, ram_mb=512, disk_gb=1)
    assert plain.resources() == {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 1}
    half = msgspec.structs.replace(plain, extra_specs={"resources:DISK_GB": "0"})
    assert half.resources() == {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 0}


async def test_a_bad_standard_override_is_refused_by_name(
    deployment: Deployment, admin: ApiClient
) -> None:
    await deployment.start_core()
    for value, why in (("lots", "is not a whole number"), ("-1", "is negative")):
        specs = {"resources:VCPU": value}
        body = {"name": f"bad{why[:3]}", "vcpus": 1, "ram_mb": 1, "extra_specs": specs}
        with pytest.raises(errors.HvmeshError) as refused:
            await admin("flavors.create", body)
        assert refused.value.code == 400
        assert "resources:VCPU" in str(refused.value) and why in str(refused.value)


def test_resource_classes_are_normalized_as_nova_does() -> None:
    assert nodes.resource_class("baremetal-gold") == "CUSTOM_BAREMETAL_GOLD"
    assert nodes.resource_class("Gold.Large v2") == "CUSTOM_GOLD_LARGE_V2"
    assert nodes.resource_class("CUSTOM_X") == "CUSTOM_X"
    assert nodes.resource_class(None) == ""


def test_the_config_drive_is_gzipped_base64(tmp_path: Path) -> None:
    iso = tmp_path / "drive.iso"
    iso.write_bytes(b"CD001" * 100)
    packed = nodes.pack_config_drive(iso)
    assert gzip.decompress(base64.b64decode(packed)) == iso.read_bytes()


def test_bad_auth_settings_are_named() -> None:
    cfg = Config()
    with pytest.raises(DriverError, match="auth_type none needs api_url"):
        connect(cfg.ironic)
    cfg.ironic.auth_type = "http_basic"
    cfg.ironic.api_url = "http://127.0.0.1:9"
    with pytest.raises(DriverError, match="http_basic needs username"):
        connect(cfg.ironic)
    cfg.ironic.auth_type = "keystone"
    with pytest.raises(DriverError, match="keystone needs `cloud`"):
        connect(cfg.ironic)


async def test_node_drivers_serve_their_conductor_group_each_node_a_host(
    ironic: Ironic, ironic_factory: Callable[..., Ironic]
) -> None:
    gold = ironic.enroll(traits=("CUSTOM_RAID",))
    manageable = ironic.enroll(available=False)
    drivers = await IronicDriver.node_drivers("agent", ironic_config(ironic))
    assert {d.host for d in drivers} == {gold, manageable}
    # An Ironic conductor serves one group: a second Ironic's serves rack2.
    rack2 = ironic_factory(conductor_group="rack2")
    grouped_node = rack2.enroll(conductor_group="rack2")
    grouped = await IronicDriver.node_drivers(
        "agent", ironic_config(rack2, conductor_group="rack2")
    )
    assert [d.host for d in grouped] == [grouped_node]
    with pytest.raises(DriverError, match="no node in conductor group rack9"):
        await IronicDriver.node_drivers("agent", ironic_config(rack2, conductor_group="rack9"))

    d = await ready(next(d for d in drivers if d.host == gold))
    try:
        inv = await d.get_inventory()
        assert inv.resources == {"CUSTOM_BAREMETAL_GOLD": 1}
        assert (inv.vcpus, inv.memory_mb, inv.local_gb) == (0, 0, 0)
        assert inv.traits == ["CUSTOM_RAID"]
        assert d.healthy()
        idle = await ready(next(d for d in drivers if d.host == manageable))
        assert (await idle.get_inventory()).resources == {}  # manageable: not schedulable
        await idle.cleanup_host()
    finally:
        await d.cleanup_host()


async def test_spawn_writes_the_node_and_a_failed_deploy_is_a_driver_error(
    ironic: Ironic,
) -> None:
    good, bad = ironic.enroll(), ironic.enroll(failing=True)
    cfg = ironic_config(ironic)
    d = await ready(IronicDriver(good, cfg))
    f = await ready(IronicDriver(bad, cfg))
    try:
        flavor = msgspec.structs.replace(
            gold_flavor(), extra_specs={**GOLD_SPECS, "capabilities:boot_mode": "uefi"}
        )
        s = server(flavor, good)
        await d.spawn(s, bm_image())
        node = ironic.node(good)
        assert (node["provision_state"], node["power_state"]) == ("active", "power on")
        info = node["instance_info"]
        assert info["image_source"] == "http://127.0.0.1:9/images/bm.raw"
        assert info["capabilities"] == {"boot_mode": "uefi"} and info["root_gb"] == "10"
        assert await d.list_instances() == [s.id]

        # Another server on a node that holds one: refused, the first one unharmed.
        with pytest.raises(DriverError, match="holds instance"):
            await d.spawn(msgspec.structs.replace(s, id="b" * 8 + s.id[8:]), bm_image())
        assert ironic.node(good)["instance_uuid"] == s.id

        t = msgspec.structs.replace(s, id="c" * 8 + s.id[8:], host=bad)
        with pytest.raises(DriverError, match=r"deploy of .* failed"):
            await f.spawn(t, bm_image())
        node = ironic.node(bad)  # the failed deploy undone: the node as it was
        assert node["provision_state"] == "available" and node["instance_uuid"] is None

        await d.destroy(s.id)
        assert ironic.node(good)["provision_state"] == "available"
        assert await d.list_instances() == []
    finally:
        await d.cleanup_host()
        await f.cleanup_host()


async def test_a_node_deployed_by_someone_else_is_not_hvmesh_s(ironic: Ironic) -> None:
    """An instance hvmesh did not deploy is never listed (so reconcile leaves it), its
    node is not schedulable, and destroy of that id changes nothing."""
    node = ironic.enroll()
    foreign = "0d5c1f0e-0000-4000-8000-00000000f00d"
    ironic.request(
        "PATCH", f"/v1/nodes/{node}",
        [{"op": "add", "path": "/instance_uuid", "value": foreign}],
    )  # fmt: skip
    ironic.provision(node, "active", "active")
    d = await ready(IronicDriver(node, ironic_config(ironic)))
    try:
        assert await d.list_instances() == []
        assert (await d.get_inventory()).resources == {}
        with pytest.raises(DriverError):
            await d.get_info(foreign)
        await d.destroy(foreign)
        assert ironic.node(node)["provision_state"] == "active"
    finally:
        await d.cleanup_host()


async def test_power_changes_made_in_ironic_are_reported_and_an_outage_is_unhealthy(
    ironic: Ironic,
) -> None:
    node = ironic.enroll()
    d = await ready(IronicDriver(node, ironic_config(ironic)))
    seen: list[tuple[str, int]] = []

    async def listener(server_id: str, power: int) -> None:
        seen.append((server_id, power))

    d.power_listener = listener
    try:
        s = server(host=node)
        await d.spawn(s, bm_image())
        ironic.set_power(node, "power off")  # behind hvmesh's back
        await until(lambda: (s.id, states.SHUTDOWN) in seen, 30.0, "the power-off report")
        assert (await d.get_info(s.id)).power_state == states.SHUTDOWN

        ironic.stop()
        await until(lambda: not d.healthy(), 30.0, "the driver to see Ironic gone")
        with pytest.raises(DriverError, match="Ironic does not answer"):
            await d.get_inventory()
        ironic.start()
        await until(d.healthy, 60.0, "the driver to see Ironic back")
        assert await d.list_instances() == [s.id]
    finally:
        await d.cleanup_host()
