"""The REST front door's compute API driven by OpenStack's own clients: the openstack CLI and openstacksdk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from tests.rest_support import (
    compute_url,
    openstack,
    openstack_text,
    os_env,
    sdk,
    start_rest,
    token,
)
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


async def test_an_openstack_cli_session_from_flavor_to_deleted_server(
    cloud: Deployment, tmp_path: Path
) -> None:
    """What an operator and a tenant do with the openstack CLI, pointed at hvmesh."""
    rest = await start_rest(cloud)
    demo_env = os_env(rest, cloud)
    admin_env = os_env(rest, cloud, "admin", "admin")

    # The admin's part: flavors, a shared network and its subnet.
    for name, ram in (("m1.small", "256"), ("m1.medium", "512")):
        await openstack(
            admin_env, "flavor", "create", name, "--vcpus", "1", "--ram", ram, "--disk", "1",
            "-f", "json",
        )  # fmt: skip
    await openstack(admin_env, "flavor", "set", "--property", "quota:cpu_shares=1024", "m1.small")
    shown = await openstack(admin_env, "flavor", "show", "m1.medium", "-f", "json")
    assert shown["properties"] == {}
    await openstack(
        admin_env, "flavor", "set", "--property", "quota:cpu_shares=512", "--property",
        "quota:disk_read_iops_sec=100", "m1.medium",
    )  # fmt: skip
    await openstack(
        admin_env, "flavor", "unset", "--property", "quota:disk_read_iops_sec", "m1.medium"
    )
    shown = await openstack(demo_env, "flavor", "show", "m1.medium", "-f", "json")
    assert shown["properties"] == {"quota:cpu_shares": "512"}
    net = await openstack(admin_env, "network", "create", "--share", "net1", "-f", "json")
    await openstack(
        admin_env, "subnet", "create", "--network", "net1", "--subnet-range", "10.50.0.0/24",
        "sub1", "-f", "json",
    )  # fmt: skip

    # The tenant's: an image from a file, a key pair, a server on the network.
    data = os.urandom(1024 * 1024)
    (tmp_path / "cirros.img").write_bytes(data)
    image = await openstack(
        demo_env, "image", "create", "--file", str(tmp_path / "cirros.img"), "--disk-format",
        "qcow2", "--container-format", "bare", "cirros", "-f", "json",
    )  # fmt: skip
    assert image["status"] == "active"
    await openstack(demo_env, "image", "save", "--file", str(tmp_path / "saved.img"), "cirros")
    assert (tmp_path / "saved.img").read_bytes() == data
    private = tmp_path / "k1.pem"
    key = await openstack(
        demo_env, "keypair", "create", "--private-key", str(private), "k1", "-f", "json"
    )
    assert key["name"] == "k1" and private.read_text().startswith("-----BEGIN")
    created = await openstack(
        demo_env, "server", "create", "--flavor", "m1.small", "--image", "cirros",
        "--network", "net1", "--key-name", "k1", "--wait", "vm1", "-f", "json",
    )  # fmt: skip
    sid = created["id"]
    assert (created["name"], created["status"], created["key_name"]) == ("vm1", "ACTIVE", "k1")
    assert cloud.store is not None
    record = (await cloud.store.servers.get(sid)).value
    assert record.key_name == "k1" and record.public_key
    assert [v.network_id for v in record.network_info] == [net["id"]]

    (row,) = await openstack(demo_env, "server", "list", "--long", "-f", "json")
    assert (row["ID"], row["Name"], row["Status"], row["Image Name"]) == (
        sid, "vm1", "ACTIVE", "cirros",
    )  # fmt: skip
    assert list(row["Networks"]) == ["net1"] and row["Flavor"] == "m1.small"  # 2.47's
    shown = await openstack(demo_env, "server", "show", sid, "-f", "json")
    assert (shown["project_id"], shown["user_id"], shown["key_name"]) == ("DEMO", "demo", "k1")
    assert shown["flavor"]["original_name"] == "m1.small" and shown["flavor"]["vcpus"] == 1
    assert shown["pinned_availability_zone"] is None and shown["scheduler_hints"] == {}

    await openstack(demo_env, "server", "stop", sid)
    await wait_server(cloud.store, sid, resting("stopped"))
    assert (await openstack(demo_env, "server", "show", sid, "-f", "json"))["status"] == "SHUTOFF"
    await openstack(demo_env, "server", "start", sid)
    await wait_server(cloud.store, sid, resting("active"))
    await openstack(demo_env, "server", "reboot", "--wait", sid)
    await wait_server(cloud.store, sid, resting("active"))

    await openstack(demo_env, "server", "resize", "--flavor", "m1.medium", "--wait", sid)
    await wait_server(cloud.store, sid, resting("resized"))
    assert (await openstack(demo_env, "server", "show", sid, "-f", "json"))["status"] == (
        "VERIFY_RESIZE"
    )
    await openstack(demo_env, "server", "resize", "confirm", sid)
    resized = await wait_server(cloud.store, sid, resting("active"))
    assert resized is not None and resized.flavor.name == "m1.medium"
    before = resized.host
    await openstack(admin_env, "server", "migrate", "--wait", sid)
    migrated = await wait_server(cloud.store, sid, resting("resized"))
    assert migrated is not None and migrated.host != before
    await openstack(admin_env, "server", "resize", "confirm", sid)
    await wait_server(cloud.store, sid, resting("active"))
    moves = await openstack(admin_env, "server", "migration", "list", "--server", sid, "-f", "json")
    assert sorted((m["Type"], m["Status"]) for m in moves) == [
        ("migration", "confirmed"),
        ("resize", "confirmed"),
    ]

    log = await openstack_text(demo_env, "console", "log", "show", sid)
    assert log.strip()

    # The admin's view: every project's servers, the hypervisors; the tenant's quotas.
    everyone = await openstack(admin_env, "server", "list", "--all-projects", "-f", "json")
    assert [r["ID"] for r in everyone] == [sid]
    assert await openstack(admin_env, "server", "list", "-f", "json") == []
    hypervisors = await openstack(admin_env, "hypervisor", "list", "-f", "json")
    assert len(hypervisors) == 3
    quota = {
        r["Resource"]: r["Limit"] for r in await openstack(demo_env, "quota", "show", "-f", "json")
    }
    assert quota["instances"] == -1 and quota["cores"] == -1  # the tests' projects are unlimited
    limits = await openstack(demo_env, "limits", "show", "--absolute", "-f", "json")
    used = {r["Name"]: r["Value"] for r in limits}
    assert used["instances_used"] == 1  # the CLI names them as openstacksdk does

    await openstack(demo_env, "server", "delete", "--wait", sid)
    assert await openstack(demo_env, "server", "list", "-f", "json") == []
    await wait_server(cloud.store, sid, gone)


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


async def test_servers_are_renamed_rebuilt_and_snapshotted(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    flavor, image, _ = await ids(admin)
    demo = ApiClient(await cloud.connect("demo"))
    sid = (await demo("servers.create", {"name": "vm1", "flavor": flavor, "image": image}))[
        "server"
    ]["id"]
    await wait_server(cloud.store, sid, settled)
    env = os_env(rest, cloud)

    await openstack(env, "server", "set", "--name", "web-1", "--property", "role=web", sid)
    await openstack(env, "server", "set", "--property", "tier=front", sid)
    await openstack(env, "server", "unset", "--property", "role", sid)
    shown = await openstack(env, "server", "show", sid, "-f", "json")
    assert (shown["name"], shown["properties"]) == ("web-1", {"tier": "front"})

    await openstack(env, "server", "rebuild", "--image", image, "--wait", sid, "-f", "json")
    rebuilt = await wait_server(cloud.store, sid, resting("active"))
    assert rebuilt is not None and rebuilt.image_id == image
    actions = await openstack(env, "server", "event", "list", sid, "-f", "json")
    assert {"create", "rebuild"} <= {a["Action"] for a in actions}

    snap = await openstack(
        env, "server", "image", "create", "--name", "snap-1", "--wait", sid, "-f", "json"
    )
    assert (snap["name"], snap["status"]) == ("snap-1", "active")
    assert (await demo("images.get", {"id": snap["id"]}))["image"]["status"] == "active"

    async with aiohttp.ClientSession() as http:
        headers = {
            "X-Auth-Token": await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        }
        server_url = f"{compute_url(rest)}/servers/{sid}"
        bad = {"server": {"name": "x", "accessIPv4": "10.0.0.9"}}
        async with http.put(server_url, json=bad, headers=headers) as r:
            assert r.status == 400 and "accessIPv4" in (await r.json())["badRequest"]["message"]
        async with http.get(f"{server_url}/metadata/nope", headers=headers) as r:
            assert r.status == 404
        async with http.put(
            f"{server_url}/metadata/k", json={"meta": {"k": "v"}}, headers=headers
        ) as r:
            assert r.status == 200 and (await r.json()) == {"meta": {"k": "v"}}
        async with http.put(
            f"{server_url}/metadata", json={"metadata": {"a": "b"}}, headers=headers
        ) as r:
            assert (await r.json()) == {"metadata": {"a": "b"}}  # PUT replaces the set
        admin_headers = {
            "X-Auth-Token": await token(
                http, rest, "admin", cloud.server.passwords["admin"], "admin"
            )
        }
        evacuate = {"evacuate": {}}
        async with http.post(f"{server_url}/action", json=evacuate, headers=admin_headers) as r:
            # The API refuses: the server's host is up (it would still be in use).
            assert r.status == 400 and "still in use" in (await r.json())["badRequest"]["message"]
        async with http.post(f"{server_url}/action", json=evacuate, headers=headers) as r:
            assert r.status == 403  # evacuate is the admin's
    after = (await demo("servers.get", {"id": sid}))["server"]
    assert (after["name"], after["metadata"], after["vm_state"]) == ("web-1", {"a": "b"}, "active")
