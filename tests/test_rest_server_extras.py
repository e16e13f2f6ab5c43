"""A server's action log and interfaces through the REST front door: the openstack CLI, openstacksdk and raw HTTP."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.rest_support import compute_url, openstack, os_env, sdk, start_rest, token
from tests.support import (
    ApiClient,
    Deployment,
    act,
    actions_finished,
    boot,
    idle,
    make_flavor_image,
    wait_server,
)


async def test_server_events_come_from_the_action_log(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    demo = ApiClient(await cloud.connect("demo"))
    await make_flavor_image(admin)
    server = await boot(cloud, demo, "logged")
    stopped = await act(demo, server.id, "stop")
    await actions_finished(cloud, server.id)
    demo_env = os_env(rest, cloud)

    listed = await openstack(demo_env, "server", "event", "list", "logged", "-f", "json")
    assert [(e["Action"], e["Server ID"]) for e in listed] == [
        ("stop", server.id),
        ("create", server.id),
    ]
    assert listed[0]["Request ID"] == stopped["request_id"]

    # The admin sees each step; a tenant the action only (events are the admin's until 2.51).
    shown = await openstack(
        os_env(rest, cloud, "admin", "admin"),
        "server", "event", "show", server.id, stopped["request_id"], "-f", "json",
    )  # fmt: skip
    assert (shown["action"], shown["user_id"], shown["project_id"]) == ("stop", "demo", "DEMO")
    assert shown["events"] and all(e["result"] == "Success" for e in shown["events"])
    assert all(e["finish_time"] for e in shown["events"])
    own = await openstack(
        demo_env, "server", "event", "show", server.id, stopped["request_id"], "-f", "json"
    )
    assert own["request_id"] == stopped["request_id"] and own["events"] == []

    url = f"{compute_url(rest)}/servers/{server.id}/os-instance-actions"
    async with aiohttp.ClientSession() as http:
        alt = await token(http, rest, "alt", cloud.server.passwords["alt"], "ALT")
        async with http.get(url, headers={"X-Auth-Token": alt}) as r:
            assert r.status == 404 and "itemNotFound" in await r.json()
        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        async with http.get(f"{url}/req-none", headers={"X-Auth-Token": demo_token}) as r:
            assert r.status == 404 and "req-none" in (await r.json())["itemNotFound"]["message"]


async def test_interfaces_attach_list_and_detach(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    demo = ApiClient(await cloud.connect("demo"))
    await make_flavor_image(admin)
    net = await admin("networks.create", {"name": "net1", "cidr": "10.1.0.0/24", "shared": True})
    net_id = net["network"]["id"]
    server = await boot(cloud, demo, "wired", networks=["net1"])
    conn = sdk(rest, cloud, "demo", "DEMO")

    (first,) = await asyncio.to_thread(lambda: list(conn.compute.server_interfaces(server.id)))
    assert first.net_id == net_id and first.port_state == "ACTIVE"
    assert first.fixed_ips[0]["ip_address"].startswith("10.1.0.")
    (subnet,) = await asyncio.to_thread(lambda: list(conn.network.subnets(network_id=net_id)))
    assert first.fixed_ips[0]["subnet_id"] == subnet.id  # the network API's subnet

    # A port of the tenant's own, attached, listed, shown and detached again.
    port = (await demo("ports.create", {"network": "net1", "name": "extra"}))["port"]
    demo_env = os_env(rest, cloud)
    await openstack(demo_env, "server", "add", "port", "wired", "extra")
    await wait_server(cloud.store, server.id, idle)
    ports = await asyncio.to_thread(lambda: list(conn.compute.server_interfaces(server.id)))
    assert {p.port_id for p in ports} == {first.port_id, port["id"]}
    one = await asyncio.to_thread(lambda: conn.compute.get_server_interface(port["id"], server.id))
    assert one.fixed_ips == [
        {"subnet_id": first.fixed_ips[0]["subnet_id"], "ip_address": port["ip"]}
    ]

    assert (one.port_id, one.mac_addr, one.net_id) == (port["id"], port["mac"], net_id)

    await openstack(demo_env, "server", "remove", "port", "wired", "extra")
    await wait_server(cloud.store, server.id, idle)
    freed = (await demo("ports.get", {"id": port["id"]}))["port"]
    assert freed["server_id"] is None  # the tenant's own port outlives the detach

    # A new port on a network, at a chosen address.
    url = f"{compute_url(rest)}/servers/{server.id}/os-interface"
    async with aiohttp.ClientSession() as http:
        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        headers = {"X-Auth-Token": demo_token}
        body = {
            "interfaceAttachment": {"net_id": net_id, "fixed_ips": [{"ip_address": "10.1.0.77"}]}
        }
        async with http.post(url, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            made = (await r.json())["interfaceAttachment"]
        assert made["fixed_ips"][0]["ip_address"] == "10.1.0.77" and made["net_id"] == net_id
        await wait_server(cloud.store, server.id, idle)
        async with http.get(url, headers=headers) as r:
            listed = (await r.json())["interfaceAttachments"]
        assert {i["port_id"] for i in listed} == {first.port_id, made["port_id"]}

        for bad, what in (
            ({"port_id": port["id"], "net_id": net_id}, "either"),
            ({"net_id": net_id, "tag": "x"}, "tag"),
            ({"net_id": net_id, "fixed_ips": "10.1.0.5"}, "fixed_ips"),
        ):
            async with http.post(url, json={"interfaceAttachment": bad}, headers=headers) as r:
                assert r.status == 400 and what in (await r.json())["badRequest"]["message"]
        async with http.delete(f"{url}/{port['id']}", headers=headers) as r:
            assert r.status == 404 and "not attached" in (await r.json())["itemNotFound"]["message"]
        async with http.get(url, headers=headers) as r:
            assert len((await r.json())["interfaceAttachments"]) == 2  # nothing changed

        alt = await token(http, rest, "alt", cloud.server.passwords["alt"], "ALT")
        async with http.get(url, headers={"X-Auth-Token": alt}) as r:
            assert r.status == 404
        async with http.get(
            f"{compute_url(rest)}/os-migrations", headers={"X-Auth-Token": demo_token}
        ) as r:
            assert (
                r.status == 501 and "os-migrations" in (await r.json())["notImplemented"]["message"]
            )
