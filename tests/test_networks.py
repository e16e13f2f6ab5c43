"""Networks, ports and hvmesh's IPAM; interfaces on servers; keypairs and user data."""

from __future__ import annotations

import asyncio
import base64
import ipaddress

import pytest

from hvmesh.agents.fake.driver import FakeDriver
from hvmesh.agents.runtime import AgentRuntime
from hvmesh.core.protocol import errors
from tests.support import (
    ApiClient,
    Deployment,
    act,
    boot,
    gone,
    idle,
    make_flavor_image,
    wait_all,
    wait_server,
)


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# An OpenSSH ed25519 public key (its 32 key bytes made up: only the format matters here).
KEY = (
    "ssh-ed25519 "
    + base64.b64encode(_ssh_string(b"ssh-ed25519") + _ssh_string(bytes(range(32)))).decode()
    + " alice@example"
)


async def nets(admin: ApiClient) -> tuple[dict, dict]:
    a = await admin(
        "networks.create",
        {"name": "net-a", "cidr": "10.10.0.0/24", "dns_nameservers": ["10.10.0.2"], "shared": True},
    )
    b = await admin(
        "networks.create",
        {
            "name": "net-b",
            "cidr": "10.20.0.0/24",
            "network_type": "vlan",
            "segmentation_id": 120,
            "shared": True,
        },
    )
    return a["network"], b["network"]


def driver_of(dep: Deployment, host: str | None) -> FakeDriver:
    for c in dep.components:
        if isinstance(c, AgentRuntime) and c.host == host:
            assert isinstance(c.driver, FakeDriver)
            return c.driver
    raise AssertionError(f"no agent for {host}")


async def test_two_networks_two_ports_with_distinct_addresses(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    a, _ = await nets(admin)
    assert (a["gateway"], a["allocation_start"]) == ("10.10.0.1", "10.10.0.2")
    server = await boot(cloud, demo, networks=["net-a", "net-b"])
    assert [v.network_name for v in server.network_info] == ["net-a", "net-b"]
    ips = [v.ip for v in server.network_info]
    assert ipaddress.ip_address(ips[0]) in ipaddress.ip_network("10.10.0.0/24")
    assert ipaddress.ip_address(ips[1]) in ipaddress.ip_network("10.20.0.0/24")
    assert len({v.mac for v in server.network_info}) == 2
    assert server.network_info[1].segmentation_id == 120
    view = (await demo("servers.get", {"id": server.id}))["server"]
    assert [x["addr"] for x in view["addresses"]["net-a"] + view["addresses"]["net-b"]] == ips
    ports = (await demo("ports.list"))["ports"]
    assert sorted(p["ip"] for p in ports) == sorted(ips)
    assert all(p["server_id"] == server.id and p["status"] == "ACTIVE" for p in ports)
    # The fake hypervisor got one NIC per port, in order.
    assert driver_of(cloud, server.host).interfaces[server.id] == [
        v.mac for v in server.network_info
    ]
    # Deleting the server removes the ports made for it and gives the addresses back.
    await demo("servers.delete", {"id": server.id})
    await wait_server(cloud.store, server.id, gone)
    assert (await demo("ports.list"))["ports"] == []
    assert (await admin("networks.get", {"id": "net-a"}))["network"]["ports"] == 0


async def test_concurrent_ports_never_share_an_address(cloud: Deployment, admin: ApiClient) -> None:
    await admin(
        "networks.create",
        {"name": "small", "cidr": "192.168.5.0/26", "allocation_start": "192.168.5.10"},
    )
    made = await asyncio.gather(*(admin("ports.create", {"network": "small"}) for _ in range(40)))
    ips = [m["port"]["ip"] for m in made]
    assert len(set(ips)) == 40
    assert min(ipaddress.ip_address(i) for i in ips) == ipaddress.ip_address("192.168.5.10")
    network = (await cloud.store.networks.values())[0]
    assert sorted(network.ips) == sorted(ips)  # the record and the ports agree
    # The range holds 10..62: 53 addresses. The rest go, then the network is full.
    await asyncio.gather(*(admin("ports.create", {"network": "small"}) for _ in range(13)))
    with pytest.raises(errors.Conflict, match="no free address left"):
        await admin("ports.create", {"network": "small"})
    with pytest.raises(errors.Conflict, match=r"192\.168\.5\.10 is in use"):
        await admin("ports.create", {"network": "small", "fixed_ip": "192.168.5.10"})
    with pytest.raises(errors.Conflict, match="has 53 port"):
        await admin("networks.delete", {"id": "small"})


async def test_user_port_is_bound_then_kept(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    await nets(admin)
    port = (
        await demo(
            "ports.create",
            {"network": "net-a", "fixed_ip": "10.10.0.50", "mac": "FA:16:3E:00:00:01"},
        )
    )["port"]
    assert port["mac"] == "fa:16:3e:00:00:01"
    server = await boot(cloud, demo, ports=[port["id"]], networks=["net-b"])
    # networks first, then ports, as given
    assert [v.ip for v in server.network_info][1] == "10.10.0.50"
    with pytest.raises(errors.Conflict, match="in use by server"):
        await demo(
            "servers.create",
            {"name": "x", "flavor": "m1.small", "image": "cirros", "ports": [port["id"]]},
        )
    with pytest.raises(errors.Conflict, match="detach it first"):
        await demo("ports.delete", {"id": port["id"]})
    await demo("servers.delete", {"id": server.id})
    await wait_server(cloud.store, server.id, gone)
    kept = (await demo("ports.get", {"id": port["id"]}))["port"]
    assert kept["server_id"] is None and kept["ip"] == "10.10.0.50"
    # A failed create binds nothing: the refused server's new port on net-b is gone too.
    with pytest.raises(errors.BadRequest, match="key_name"):
        await demo(
            "servers.create",
            {
                "name": "y",
                "flavor": "m1.small",
                "image": "cirros",
                "networks": ["net-b"],
                "key_name": "nope",
            },
        )
    assert [p["id"] for p in (await demo("ports.list"))["ports"]] == [port["id"]]


async def test_attach_and_detach_interface(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    await nets(admin)
    server = await boot(cloud, demo, networks=["net-a"])
    reply = await act(demo, server.id, "attach-interface", network="net-b", fixed_ip="10.20.0.9")
    assert reply["server"]["task_state"] == "interface_attaching"
    after = await wait_server(cloud.store, server.id, idle)
    assert after is not None and [v.ip for v in after.network_info][-1] == "10.20.0.9"
    new = after.network_info[-1]
    assert new.mac in driver_of(cloud, after.host).interfaces[server.id]
    assert (await demo("ports.get", {"id": new.port_id}))["port"]["status"] == "ACTIVE"
    with pytest.raises(errors.BadRequest, match="is not an interface"):
        await act(demo, server.id, "detach-interface", port="nope")
    await act(demo, server.id, "detach-interface", port=new.port_id)
    done = await wait_server(cloud.store, server.id, idle)
    assert done is not None and [v.network_name for v in done.network_info] == ["net-a"]
    assert new.mac not in driver_of(cloud, done.host).interfaces[server.id]
    with pytest.raises(errors.NotFound):
        await demo("ports.get", {"id": new.port_id})
    with pytest.raises(errors.BadRequest, match="either network or port"):
        await act(demo, server.id, "attach-interface")


async def test_failed_attach_gives_its_port_back(deployment: Deployment) -> None:
    cfg = deployment.config(fake={"fail_steps": ["attach_interface"]})
    await deployment.start_core(cfg, fake_hosts=1)
    admin = ApiClient(await deployment.connect("admin"))
    await make_flavor_image(admin)
    await nets(admin)
    server = await boot(deployment, admin)
    await act(admin, server.id, "attach-interface", network="net-a")
    after = await wait_server(deployment.store, server.id, idle)
    assert after is not None and after.vm_state == "active" and after.network_info == []
    assert (await admin("ports.list"))["ports"] == []
    log = (await admin("servers.events.list", {"id": server.id}))["instance_actions"]
    assert {a["action"]: a["message"] for a in log}["attach-interface"] == "Error"


async def test_multi_create_gives_each_server_its_own_port(
    cloud: Deployment, admin: ApiClient
) -> None:
    await make_flavor_image(admin)
    await nets(admin)
    reply = await admin(
        "servers.create",
        {
            "name": "m",
            "flavor": "m1.small",
            "image": "cirros",
            "networks": ["net-a"],
            "min_count": 3,
        },
    )
    ids = {s["id"] for s in reply["servers"]}
    servers = await wait_all(cloud.store, ids, idle)
    ips = [s.network_info[0].ip for s in servers.values() if s is not None]
    assert len(set(ips)) == 3
    with pytest.raises(errors.BadRequest, match="not with max_count > 1"):
        await admin(
            "servers.create",
            {"name": "p", "flavor": "m1.small", "image": "cirros", "ports": ["x"], "max_count": 2},
        )


async def test_keypair_and_user_data_reach_the_server(
    cloud: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await make_flavor_image(admin)
    kp = (await demo("keypairs.create", {"name": "alice", "public_key": KEY}))["keypair"]
    assert len(kp["fingerprint"].split(":")) == 16
    with pytest.raises(errors.Conflict, match="exists"):
        await demo("keypairs.create", {"name": "alice", "public_key": KEY})
    assert (await admin("keypairs.list"))["keypairs"] == []  # keypairs are per user
    user_data = base64.b64encode(b"#cloud-config\nhostname: web\n").decode()
    server = await boot(cloud, demo, key_name="alice", user_data=user_data, config_drive=True)
    assert server.public_key == KEY and server.user_data == user_data and server.config_drive
    view = (await demo("servers.get", {"id": server.id}))["server"]
    assert view["key_name"] == "alice" and view["config_drive"] is True
    too_big = base64.b64encode(b"x" * 70_000).decode()
    with pytest.raises(errors.BadRequest, match="user_data: 70000 bytes"):
        await demo(
            "servers.create",
            {"name": "b", "flavor": "m1.small", "image": "cirros", "user_data": too_big},
        )


async def test_a_network_takes_the_id_it_is_given(cloud: Deployment, admin: ApiClient) -> None:
    wanted = "0b6a3e4e-6f43-4d7a-9a55-5a2b1b0c9d01"
    made = await admin("networks.create", {"name": "n1", "cidr": "10.40.0.0/24", "id": wanted})
    assert made["network"]["id"] == wanted
    with pytest.raises(errors.Conflict, match=f"network id {wanted} exists"):
        await admin("networks.create", {"name": "n2", "cidr": "10.41.0.0/24", "id": wanted})
    with pytest.raises(errors.BadRequest, match="id"):
        await admin("networks.create", {"name": "n3", "cidr": "10.42.0.0/24", "id": "net-x"})
    names = [n["name"] for n in (await admin("networks.list"))["networks"]]
    assert names == ["n1"]  # the refused ones changed nothing
