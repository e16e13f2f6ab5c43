"""The REST front door's compute API driven by OpenStack's own clients: the openstack CLI and openstacksdk."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openstack as openstacksdk

from tests.rest_support import compute_url, openstack, os_env, start_rest, token
from tests.support import (
    ApiClient,
    Deployment,
    gone,
    make_flavor_image,
    resting,
    settled,
    wait_all,
    wait_server,
)


async def ids(admin: ApiClient) -> tuple[str, str, str]:
    """(flavor, image, network) ids of make_flavor_image's flavor and image and a network."""
    await make_flavor_image(admin)
    flavor = (await admin("flavors.get", {"name": "m1.small"}))["flavor"]["id"]
    image = (await admin("images.get", {"name": "cirros"}))["image"]["id"]
    network = await admin(
        "networks.create", {"name": "net1", "cidr": "10.0.0.0/24", "shared": True}
    )
    return flavor, image, network["network"]["id"]


def sdk(rest: Any, dep: Deployment, user: str = "demo", project: str = "DEMO") -> Any:
    return openstacksdk.connect(
        auth_url=rest.auth_url,
        username=user,
        password=dep.server.passwords[user],
        project_name=project,
        user_domain_name="Default",
        project_domain_name="Default",
        region_name="RegionOne",
    )


async def test_the_openstack_cli_runs_servers_and_flavors(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    flavor, image, network = await ids(admin)
    demo_env = os_env(rest, cloud)
    admin_env = os_env(rest, cloud, "admin", "admin")

    made = await openstack(
        admin_env, "flavor", "create", "m1.tiny", "--vcpus", "1", "--ram", "256", "--disk", "1",
        "-f", "json",
    )  # fmt: skip
    assert (made["name"], made["ram"], made["vcpus"]) == ("m1.tiny", 256, 1)
    listed = await openstack(demo_env, "flavor", "list", "-f", "json")
    assert {f["Name"] for f in listed} == {"m1.small", "m1.tiny"}
    await openstack(admin_env, "flavor", "delete", made["id"])
    listed = await openstack(demo_env, "flavor", "list", "-f", "json")
    assert [f["Name"] for f in listed] == ["m1.small"]

    # The boot itself goes through openstacksdk's compute proxy: `openstack server create`
    # looks its image and network up in the image and network APIs, not served yet.
    conn = sdk(rest, cloud)
    created = await asyncio.to_thread(
        lambda: conn.compute.create_server(
            name="vm1", flavor_id=flavor, image_id=image, networks=[{"uuid": network}]
        )
    )
    await wait_server(cloud.store, created.id, settled)

    (row,) = await openstack(demo_env, "server", "list", "-f", "json")
    assert (row["ID"], row["Name"], row["Status"]) == (created.id, "vm1", "ACTIVE")
    assert list(row["Networks"]) == ["net1"]
    shown = await openstack(demo_env, "server", "show", created.id, "-f", "json")
    assert (shown["status"], shown["project_id"], shown["user_id"]) == ("ACTIVE", "DEMO", "demo")
    assert shown["flavor"].startswith("m1.small")

    await openstack(demo_env, "server", "stop", created.id)
    await wait_server(cloud.store, created.id, resting("stopped"))
    shown = await openstack(demo_env, "server", "show", created.id, "-f", "json")
    assert shown["status"] == "SHUTOFF"
    await openstack(demo_env, "server", "start", created.id)
    await wait_server(cloud.store, created.id, resting("active"))

    await openstack(demo_env, "server", "delete", "--wait", created.id)
    assert await openstack(demo_env, "server", "list", "-f", "json") == []
    await wait_server(cloud.store, created.id, gone)


async def test_openstacksdk_pages_servers_and_waits_for_them(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    flavor, image, network = await ids(admin)
    demo = ApiClient(await cloud.connect("demo"))
    reply = await demo(
        "servers.create",
        {"name": "many", "flavor": flavor, "image": image, "min_count": 5, "max_count": 5},
    )
    made = reply.get("servers") or [reply["server"]]
    listed_by_nats = await demo("servers.list", {})
    every = {s["id"] for s in listed_by_nats["servers"]}
    assert len(every) == 5, made
    await wait_all(cloud.store, every, settled)

    conn = sdk(rest, cloud)
    paged = await asyncio.to_thread(lambda: [s.id for s in conn.compute.servers(limit=2)])
    assert sorted(paged) == sorted(every) and len(paged) == 5

    async with aiohttp.ClientSession() as http:
        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        url = f"{compute_url(rest)}/servers/detail?limit=2"
        async with http.get(url, headers={"X-Auth-Token": demo_token}) as r:
            page = await r.json()
        assert len(page["servers"]) == 2 and page["servers_links"][0]["rel"] == "next"
        assert "marker=" in page["servers_links"][0]["href"]

    server = await asyncio.to_thread(
        lambda: conn.compute.create_server(
            name="one-more", flavor_id=flavor, image_id=image, networks=[{"uuid": network}]
        )
    )
    server = await asyncio.to_thread(lambda: conn.compute.wait_for_server(server, wait=120))
    assert server.status == "ACTIVE" and list(server.addresses) == ["net1"]
    await asyncio.to_thread(lambda: conn.compute.delete_server(server))
    await asyncio.to_thread(lambda: conn.compute.wait_for_delete(server, wait=120))
    await wait_server(cloud.store, server.id, gone)


async def test_compute_errors_come_in_novas_shape(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    flavor, image, _ = await ids(admin)
    async with aiohttp.ClientSession() as http:
        demo = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        headers = {"X-Auth-Token": demo, "OpenStack-API-Version": "compute 2.37"}
        body = {"server": {"name": "x", "flavorRef": flavor, "imageRef": image}}
        async with http.post(f"{compute_url(rest)}/servers", json=body, headers=headers) as r:
            assert r.status == 400
            assert "networks" in (await r.json())["badRequest"]["message"]
        body["server"]["networks"] = "none"
        body["server"]["flavorRef"] = "no-such-flavor"
        async with http.post(f"{compute_url(rest)}/servers", json=body, headers=headers) as r:
            assert r.status in (400, 404), await r.text()
            fault = next(iter((await r.json()).values()))
            assert "no-such-flavor" in fault["message"]
        async with http.post(
            f"{compute_url(rest)}/flavors",
            json={"flavor": {"name": "f", "vcpus": 1, "ram": 64}},
            headers=headers,
        ) as r:
            assert r.status == 403 and (await r.json())["forbidden"]["code"] == 403
        async with http.get(f"{compute_url(rest)}/servers?status=SLEEPY", headers=headers) as r:
            assert r.status == 400 and "status" in (await r.json())["badRequest"]["message"]
