"""A server's action log and interfaces through the REST front door: the openstack CLI, openstacksdk and raw HTTP."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

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
    # Paged and filtered from 2.58 (changes-before from 2.66), as the CLI now negotiates.
    (newest,) = await openstack(
        demo_env, "server", "event", "list", "logged", "--limit", "1", "-f", "json"
    )
    assert newest["Request ID"] == stopped["request_id"]
    assert not await openstack(
        demo_env, "server", "event", "list", "logged", "--changes-before", "2000-01-01T00:00:00Z",
        "-f", "json",
    )  # fmt: skip

    # The admin sees each step with its host; from 2.51 a tenant too, without the host.
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
    assert own["request_id"] == stopped["request_id"]
    assert [e["event"] for e in own["events"]] == [e["event"] for e in shown["events"]]
    assert all(e["host"] is None and e["traceback"] is None for e in own["events"])
    assert all(e["host_id"] == "" for e in own["events"])  # no host to hash for a tenant

    url = f"{compute_url(rest)}/servers/{server.id}/os-instance-actions"
    async with aiohttp.ClientSession() as http:
        alt = await token(http, rest, "alt", cloud.server.passwords["alt"], "ALT")
        async with http.get(url, headers={"X-Auth-Token": alt}) as r:
            assert r.status == 404 and "itemNotFound" in await r.json()
        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        async with http.get(f"{url}/req-none", headers={"X-Auth-Token": demo_token}) as r:
            assert r.status == 404 and "req-none" in (await r.json())["itemNotFound"]["message"]


async def get(http: aiohttp.ClientSession, url: str, auth: str, version: str) -> Any:
    """A compute GET at a microversion: the status and the JSON body."""
    headers = {"X-Auth-Token": auth, "OpenStack-API-Version": f"compute {version}"}
    async with http.get(url, headers=headers) as r:
        return r.status, await r.json()


async def test_instance_actions_by_microversion(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    demo = ApiClient(await cloud.connect("demo"))
    await make_flavor_image(admin)
    server = await boot(cloud, demo, "versioned")
    stopped = await act(demo, server.id, "stop")
    await actions_finished(cloud, server.id)
    url = f"{compute_url(rest)}/servers/{server.id}/os-instance-actions"
    one = f"{url}/{stopped['request_id']}"
    async with aiohttp.ClientSession() as http:
        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        admin_token = await token(http, rest, "admin", cloud.server.passwords["admin"], "admin")

        # Events: the admin's until 2.51, then a tenant's without traceback; hostId from
        # 2.62 (hashed per project, empty for a tenant, who is not told the host), host for
        # the admin; details (the failure message) from 2.84 for the admin.
        _, body = await get(http, one, demo_token, "2.50")
        assert body["instanceAction"]["events"] == []
        _, body = await get(http, one, demo_token, "2.51")
        event = body["instanceAction"]["events"][0]
        assert set(event) == {"event", "start_time", "finish_time", "result"}
        assert "updated_at" not in body["instanceAction"]
        _, body = await get(http, one, demo_token, "2.62")
        assert {e["hostId"] for e in body["instanceAction"]["events"]} == {""}
        assert "host" not in body["instanceAction"]["events"][0]
        _, body = await get(http, one, admin_token, "2.61")
        assert set(body["instanceAction"]["events"][0]) == {
            "event", "start_time", "finish_time", "result", "traceback",
        }  # fmt: skip
        _, body = await get(http, one, admin_token, "2.62")
        hosted = [e for e in body["instanceAction"]["events"] if e["host"]]
        assert hosted and all(e["host"] == server.host for e in hosted)
        expected = hashlib.sha224(("DEMO" + str(server.host)).encode()).hexdigest()
        assert all(e["hostId"] == expected for e in hosted)
        assert "details" not in hosted[0]
        _, body = await get(http, one, admin_token, "2.84")
        assert all(e["details"] is None for e in body["instanceAction"]["events"])
        _, body = await get(http, one, demo_token, "2.84")
        assert "details" not in body["instanceAction"]["events"][0]

        # Lists: the whole log before 2.58 (no paging); then updated_at, limit, marker,
        # changes-since, and changes-before from 2.66.
        status, body = await get(http, f"{url}?limit=1", demo_token, "2.57")
        assert status == 200 and len(body["instanceActions"]) == 2 and "links" not in body
        assert "updated_at" not in body["instanceActions"][0]
        status, body = await get(http, f"{url}?limit=1", demo_token, "2.58")
        assert [a["request_id"] for a in body["instanceActions"]] == [stopped["request_id"]]
        newest = body["instanceActions"][0]
        assert newest["updated_at"] >= newest["start_time"]
        (link,) = body["links"]
        assert link["rel"] == "next" and f"marker={stopped['request_id']}" in link["href"]
        _, body = await get(http, link["href"], demo_token, "2.58")
        assert [a["action"] for a in body["instanceActions"]] == ["create"]
        later = "2999-01-01T00:00:00Z"
        _, body = await get(http, f"{url}?changes-since={later}", demo_token, "2.58")
        assert body["instanceActions"] == []
        _, body = await get(http, f"{url}?changes-before={later}", demo_token, "2.66")
        assert len(body["instanceActions"]) == 2
        for query, version, what in (
            ("changes-before=2020-01-01", "2.65", "changes-before"),
            ("sort=asc", "2.58", "sort"),
            ("marker=req-none", "2.58", "req-none"),
            ("limit=-1", "2.58", "limit"),
            ("changes-since=yesterday", "2.58", "changes-since"),
            ("changes-since=2030-01-01&changes-before=2020-01-01", "2.66", "changes-before"),
        ):
            status, body = await get(http, f"{url}?{query}", demo_token, version)
            assert status == 400 and what in body["badRequest"]["message"], (query, body)


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

        assert all("tag" not in i for i in listed)  # before 2.70
        for version, tagged in (("2.69", False), ("2.70", True)):
            _, body = await get(http, url, demo_token, version)
            assert all(("tag" in i) == tagged for i in body["interfaceAttachments"])
            assert all(i.get("tag") is None for i in body["interfaceAttachments"])
            _, body = await get(http, f"{url}/{made['port_id']}", demo_token, version)
            assert ("tag" in body["interfaceAttachment"]) == tagged

        tagging = {**headers, "OpenStack-API-Version": "compute 2.49"}
        for bad, what, sent in (
            ({"port_id": port["id"], "net_id": net_id}, "either", headers),
            ({"net_id": net_id, "tag": "x"}, "tag", headers),
            ({"net_id": net_id, "tag": "x"}, "tag", tagging),  # hvmesh tags no devices
            ({"net_id": net_id, "fixed_ips": "10.1.0.5"}, "fixed_ips", headers),
        ):
            async with http.post(url, json={"interfaceAttachment": bad}, headers=sent) as r:
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
            assert r.status == 403  # the admin's
