"""The REST front door's network v2.0 API driven by OpenStack's own clients: the openstack CLI and openstacksdk."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from openstack import exceptions as sdk_errors

from tests.rest_support import network_url, openstack, os_env, sdk, start_rest, token
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server


async def test_the_openstack_cli_makes_networks_subnets_and_ports(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    admin_env = os_env(rest, cloud, "admin", "admin")
    demo_env = os_env(rest, cloud)

    made = await openstack(admin_env, "network", "create", "--share", "net1", "-f", "json")
    assert (made["name"], made["shared"], made["subnets"]) == ("net1", True, [])
    assert (made["status"], made["project_id"]) == ("ACTIVE", "admin")
    subnet = await openstack(
        admin_env, "subnet", "create", "--network", "net1", "--subnet-range", "10.20.0.0/24",
        "sub1", "-f", "json",
    )  # fmt: skip
    native = (await admin("networks.get", {"name": "net1"}))["network"]
    assert (native["cidr"], native["gateway"], native["shared"]) == (
        "10.20.0.0/24",
        "10.20.0.1",
        True,
    )
    assert (subnet["cidr"], subnet["network_id"], subnet["ip_version"]) == (
        "10.20.0.0/24", native["id"], 4,
    )  # fmt: skip
    assert subnet["allocation_pools"] == [{"start": "10.20.0.2", "end": "10.20.0.254"}]
    # The network keeps the id `network create` gave it.
    assert native["id"] == made["id"]
    again = await openstack(admin_env, "network", "show", made["id"], "-f", "json")
    assert (again["id"], again["subnets"]) == (made["id"], [subnet["id"]])
    assert again["provider:network_type"] == "flat"

    await admin("networks.create", {"name": "private", "cidr": "10.30.0.0/24"})
    listed = await openstack(demo_env, "network", "list", "-f", "json")
    assert [(n["Name"], n["Subnets"]) for n in listed] == [("net1", [subnet["id"]])]
    everything = await openstack(admin_env, "network", "list", "-f", "json")
    assert sorted(n["Name"] for n in everything) == ["net1", "private"]
    shown = await openstack(demo_env, "network", "show", "net1", "-f", "json")
    assert (shown["id"], shown["shared"], shown["mtu"]) == (native["id"], True, 1500)
    assert shown.get("provider:network_type") is None  # the admin's only
    subnets = await openstack(demo_env, "subnet", "list", "-f", "json")
    assert [(s["ID"], s["Subnet"]) for s in subnets] == [(subnet["id"], "10.20.0.0/24")]
    sub = await openstack(demo_env, "subnet", "show", subnet["id"], "-f", "json")
    assert (sub["gateway_ip"], sub["network_id"]) == ("10.20.0.1", native["id"])

    port = await openstack(demo_env, "port", "create", "--network", "net1", "p1", "-f", "json")
    (fixed,) = port["fixed_ips"]
    assert fixed["subnet_id"] == subnet["id"] and fixed["ip_address"].startswith("10.20.0.")
    assert (port["project_id"], port["device_id"], port["network_id"]) == ("DEMO", "", native["id"])
    ports = await openstack(demo_env, "port", "list", "--network", "net1", "-f", "json")
    assert [(p["ID"], p["Name"], p["MAC Address"]) for p in ports] == [
        (port["id"], "p1", port["mac_address"])
    ]
    by_ip = await openstack(
        demo_env, "port", "list", "--fixed-ip", f"ip-address={fixed['ip_address']}", "-f", "json"
    )
    assert [p["ID"] for p in by_ip] == [port["id"]]
    shown_port = await openstack(demo_env, "port", "show", "p1", "-f", "json")
    assert (shown_port["id"], shown_port["status"]) == (port["id"], "DOWN")
    native_port = (await admin("ports.get", {"id": port["id"]}))["port"]
    assert native_port["ip"] == fixed["ip_address"]

    # Another tenant sees neither the port nor the admin's private network.
    alt = sdk(rest, cloud, "alt", "ALT")
    with pytest.raises(sdk_errors.NotFoundException):
        await asyncio.to_thread(lambda: alt.network.get_port(port["id"]))
    assert await asyncio.to_thread(lambda: [p.id for p in alt.network.ports()]) == []

    await openstack(demo_env, "port", "delete", "p1")
    assert await openstack(demo_env, "port", "list", "--network", "net1", "-f", "json") == []
    assert (await admin("ports.list", {}))["ports"] == []
    assert await openstack(demo_env, "server", "list", "-f", "json") == []

    # Teardown as Neutron's clients do it: the subnet, then the network (same id all along).
    await openstack(admin_env, "subnet", "delete", subnet["id"])
    bare = await openstack(admin_env, "network", "show", native["id"], "-f", "json")
    assert (bare["name"], bare["subnets"]) == ("net1", [])
    await openstack(admin_env, "network", "delete", "net1", "private")
    assert await openstack(admin_env, "network", "list", "-f", "json") == []
    assert (await admin("networks.list", {}))["networks"] == []


async def test_openstacksdk_finds_networks_and_errors_come_in_neutrons_shape(
    cloud: Deployment,
) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    shared = (
        await admin("networks.create", {"name": "public", "cidr": "10.40.0.0/24", "shared": True})
    )["network"]
    await admin("networks.create", {"name": "private", "cidr": "10.50.0.0/24"})

    conn = sdk(rest, cloud, "demo", "DEMO")
    names = await asyncio.to_thread(lambda: [n.name for n in conn.network.networks()])
    assert names == ["public"]
    found = await asyncio.to_thread(lambda: conn.network.find_network("public"))
    assert found is not None and found.id == shared["id"] and found.is_shared
    missing = await asyncio.to_thread(lambda: conn.network.find_network("private"))
    assert missing is None
    filtered = await asyncio.to_thread(lambda: list(conn.network.networks(is_shared=False)))
    assert filtered == []

    async with aiohttp.ClientSession() as http:
        base = network_url(rest)
        async with http.get(base) as r:
            versions = (await r.json())["versions"]
        assert [v["id"] for v in versions] == ["v2.0"]
        demo = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        headers = {"X-Auth-Token": demo}
        async with http.get(f"{base}/v2.0/networks/no-such-net", headers=headers) as r:
            assert r.status == 404
            error = (await r.json())["NeutronError"]
        assert error["type"] == "NetworkNotFound" and "no-such-net" in error["message"]
        body = {"network": {"name": "mine"}}
        async with http.post(f"{base}/v2.0/networks", json=body, headers=headers) as r:
            assert r.status == 403, await r.text()
        body = {"port": {"network_id": shared["id"], "fixed_ips": [{"ip_address": "10.9.9.9"}]}}
        async with http.post(f"{base}/v2.0/ports", json=body, headers=headers) as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["NeutronError"]["type"] == "HTTPBadRequest"
        async with http.get(f"{base}/v2.0/extensions", headers=headers) as r:
            aliases = {e["alias"] for e in (await r.json())["extensions"]}
        assert {"provider", "net-mtu", "binding"} <= aliases

        # Bad input from the admin: a clear 4xx naming what is wrong, and nothing changed.
        boss = {
            "X-Auth-Token": await token(
                http, rest, "admin", cloud.server.passwords["admin"], "admin"
            )
        }
        nets = f"{base}/v2.0/networks"
        async with http.post(nets, json={"network": {"name": "public"}}, headers=boss) as r:
            assert r.status == 409, await r.text()
        bad = {"network": {"name": "n2", "provider:network_type": "vxlan"}}
        async with http.post(nets, json=bad, headers=boss) as r:
            assert r.status == 400
            assert "provider:network_type" in (await r.json())["NeutronError"]["message"]
        async with http.post(nets, json={"network": {"name": "n2"}}, headers=boss) as r:
            assert r.status == 201
            n2 = (await r.json())["network"]["id"]
        subnets = f"{base}/v2.0/subnets"
        bad = {"subnet": {"network_id": n2, "cidr": "10.60.0.0/33", "ip_version": 4}}
        async with http.post(subnets, json=bad, headers=boss) as r:
            assert r.status == 400, await r.text()
        bad = {"subnet": {"network_id": n2, "cidr": "10.60.0.0/24", "ip_version": 6}}
        async with http.post(subnets, json=bad, headers=boss) as r:
            assert r.status == 400 and "ip_version" in await r.text()
        async with http.get(f"{nets}/{n2}", headers=boss) as r:
            assert (await r.json())["network"]["subnets"] == []
        again = {"subnet": {"network_id": shared["id"], "cidr": "10.70.0.0/24"}}
        async with http.post(subnets, json=again, headers=boss) as r:
            assert r.status == 409, await r.text()
        async with http.delete(f"{nets}/{n2}", headers=boss) as r:
            assert r.status == 204
        async with http.get(f"{nets}/{n2}", headers=boss) as r:
            assert r.status == 404
    listed = (await admin("networks.list", {}))["networks"]
    assert sorted(n["name"] for n in listed) == ["private", "public"]

    # A server's port: its device is the server, its owner the server's zone; the admin
    # also sees the host it is bound on.
    await make_flavor_image(admin)
    demo_api = ApiClient(await cloud.connect("demo"))
    server = (
        await demo_api(
            "servers.create",
            {"name": "vm1", "flavor": "m1.small", "image": "cirros", "networks": ["public"]},
        )
    )["server"]
    record = await wait_server(cloud.store, server["id"], settled)
    assert record is not None and record.vm_state == "active"
    (port,) = await asyncio.to_thread(lambda: list(conn.network.ports(device_id=server["id"])))
    assert port.device_owner == f"compute:{record.availability_zone or 'nova'}"
    assert port.fixed_ips[0]["ip_address"].startswith("10.40.0.")
    assert port.binding_host_id in (None, "")  # the admin's only
    owned = await asyncio.to_thread(
        lambda: list(conn.network.ports(device_owner=port.device_owner))
    )
    assert [p.id for p in owned] == [port.id]
    admin_conn = sdk(rest, cloud, "admin", "admin")
    seen = await asyncio.to_thread(lambda: admin_conn.network.get_port(port.id))
    assert seen.binding_host_id == record.host and record.host
