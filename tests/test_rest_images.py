"""The REST front door's image API driven by OpenStack's own clients: the openstack CLI and openstacksdk."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import aiohttp

from tests.rest_support import image_url, openstack, os_env, sdk, start_rest, token
from tests.support import ApiClient, Deployment, make_flavor_image, settled, until, wait_server


async def test_the_openstack_cli_uploads_lists_saves_and_deletes_images(
    cloud: Deployment, tmp_path: Path
) -> None:
    rest = await start_rest(cloud)
    admin = ApiClient(await cloud.connect("admin"))
    await make_flavor_image(admin)
    demo_env = os_env(rest, cloud)
    admin_env = os_env(rest, cloud, "admin", "admin")
    data = os.urandom(3 * 1024 * 1024 + 12345)  # a dozen chunks and a short last one
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(data)

    mine = await openstack(
        demo_env, "image", "create", "--file", str(disk), "--disk-format", "qcow2",
        "--container-format", "bare", "--property", "os_distro=cirros", "mine", "-f", "json",
    )  # fmt: skip
    assert (mine["status"], mine["size"], mine["visibility"]) == ("active", len(data), "private")
    assert mine["owner"] == "DEMO" and mine["properties"]["os_distro"] == "cirros"
    assert mine["properties"]["os_hash_algo"] == "sha256"
    record = (await admin("images.get", {"id": mine["id"]}))["image"]
    sha256 = hashlib.sha256(data).hexdigest()
    assert record["checksum"] == sha256 == mine["properties"]["os_hash_value"]
    assert (record["project"], record["properties"]["os_distro"]) == ("DEMO", "cirros")

    base_file = tmp_path / "base.raw"
    base_file.write_bytes(data[:70000])
    base = await openstack(
        admin_env, "image", "create", "--public", "--file", str(base_file),
        "--disk-format", "raw", "--container-format", "bare", "base", "-f", "json",
    )  # fmt: skip
    assert (base["visibility"], base["disk_format"], base["size"]) == ("public", "raw", 70000)

    listed = await openstack(demo_env, "image", "list", "-f", "json")
    assert {i["Name"] for i in listed} == {"base", "cirros", "mine"}
    assert {i["Status"] for i in listed} == {"active"}
    listed = await openstack(demo_env, "image", "list", "--public", "-f", "json")
    assert {i["Name"] for i in listed} == {"base", "cirros"}
    shown = await openstack(demo_env, "image", "show", "mine", "-f", "json")
    assert (shown["id"], shown["disk_format"]) == (mine["id"], "qcow2")
    await openstack(
        demo_env, "image", "set", "--property", "os_version=3.6", "--min-ram", "64", "mine"
    )
    await openstack(demo_env, "image", "unset", "--property", "os_distro", "mine")
    native = (await admin("images.get", {"id": mine["id"]}))["image"]
    assert (native["properties"]["os_version"], native["min_ram_mb"]) == ("3.6", 64)
    assert "os_distro" not in native["properties"]

    # Another tenant neither lists nor sees the private image.
    alt_listed = await openstack(os_env(rest, cloud, "alt", "ALT"), "image", "list", "-f", "json")
    assert {i["Name"] for i in alt_listed} == {"base", "cirros"}
    async with aiohttp.ClientSession() as http:
        alt = await token(http, rest, "alt", cloud.server.passwords["alt"], "ALT")
        url = f"{image_url(rest)}/v2/images/{mine['id']}"
        async with http.get(url, headers={"X-Auth-Token": alt}) as r:
            assert r.status == 404 and mine["id"] in await r.text()
        async with http.delete(url, headers={"X-Auth-Token": alt}) as r:
            assert r.status == 404
        async with http.get(f"{url}/file", headers={"X-Auth-Token": alt}) as r:
            assert r.status == 404  # nor reads its bytes

    saved = tmp_path / "saved"
    await openstack(demo_env, "image", "save", "--file", str(saved), mine["id"])
    assert saved.read_bytes() == data
    await openstack(admin_env, "image", "save", "--file", str(saved), "base")
    assert saved.stat().st_size == 70000

    # A server booted from the public image: `server list` names its image.
    demo = ApiClient(await cloud.connect("demo"))
    server = await demo("servers.create", {"name": "vm1", "flavor": "m1.small", "image": "base"})
    await wait_server(cloud.store, server["server"]["id"], settled)
    (row,) = await openstack(demo_env, "server", "list", "-f", "json")
    assert (row["Name"], row["Image"]) == ("vm1", "base")

    await openstack(demo_env, "image", "delete", "mine")
    listed = await openstack(demo_env, "image", "list", "-f", "json")
    assert {i["Name"] for i in listed} == {"base", "cirros"}
    assert (await admin("images.list", {"name": "mine"}))["images"] == []


async def test_openstacksdk_pages_uploads_and_downloads_images(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    demo = ApiClient(await cloud.connect("demo"))
    for n in range(7):
        await demo("images.create", {"name": f"rec-{n}", "visibility": "private"})

    conn = sdk(rest, cloud)
    paged = await asyncio.to_thread(lambda: [i.name for i in conn.image.images(limit=3)])
    assert paged == [f"rec-{n}" for n in range(7)]
    data = os.urandom(600 * 1024)
    made = await asyncio.to_thread(
        lambda: conn.image.create_image(
            "sdk-img", data=data, disk_format="raw", container_format="bare", hw_disk_bus="virtio"
        )
    )
    image = await asyncio.to_thread(lambda: conn.image.get_image(made.id))
    assert (image.status, image.size, image.owner_id) == ("active", len(data), "DEMO")
    assert image.hw_disk_bus == "virtio"
    assert image.hash_value == hashlib.sha256(data).hexdigest()

    downloaded = await asyncio.to_thread(lambda: conn.image.download_image(made.id))
    assert downloaded.content == data

    async with aiohttp.ClientSession() as http:
        async with http.get(image_url(rest)) as r:
            assert r.status == 300
            versions = (await r.json())["versions"]
        assert versions[0]["status"] == "CURRENT"
        assert versions[0]["links"][0]["href"] == f"{image_url(rest)}/v2/"

        demo_token = await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        auth = {"X-Auth-Token": demo_token}
        images = f"{image_url(rest)}/v2/images"
        async with http.get(f"{images}?limit=3&visibility=private", headers=auth) as r:
            page = await r.json()
        assert [i["name"] for i in page["images"]] == ["rec-0", "rec-1", "rec-2"]
        assert page["next"].startswith("/v2/images?") and "marker=" in page["next"]

        # `server list`'s lookup by ids; an image is found by id only, as Glance finds it.
        async with http.get(f"{images}?id=in:{made.id},no-such-image", headers=auth) as r:
            assert [i["name"] for i in (await r.json())["images"]] == ["sdk-img"]
        async with http.get(f"{images}/sdk-img", headers=auth) as r:
            assert r.status == 404

        bad = {"name": "x", "visibility": "community"}
        async with http.post(images, json=bad, headers=auth) as r:
            assert r.status == 400 and "visibility" in (await r.json())["badRequest"]["message"]
        async with http.post(images, json={"name": "x", "status": "active"}, headers=auth) as r:
            assert r.status == 403 and "status" in await r.text()
        async with http.put(
            f"{images}/{made.id}/file",
            data=b"again",
            headers={**auth, "Content-Type": "application/octet-stream"},
        ) as r:
            assert r.status == 409 and "active" in await r.text()
        patch_type = {**auth, "Content-Type": "application/openstack-images-v2.1-json-patch"}
        for patch, status in (
            ([{"op": "replace", "path": "/status", "value": "queued"}], 403),  # read-only
            ([{"op": "replace", "path": "/visibility", "value": "public"}], 403),  # admin's
            ([{"op": "remove", "path": "/no_such_property"}], 409),
            ([{"op": "replace", "path": "/name", "value": "renamed"},
              {"op": "move", "path": "/name"}], 400),
        ):  # fmt: skip
            async with http.patch(f"{images}/{made.id}", json=patch, headers=patch_type) as r:
                assert r.status == status, (patch, await r.text())
        async with http.patch(f"{images}/{made.id}", json=[], headers=auth) as r:
            assert r.status == 415  # not a JSON patch
        async with http.get(images) as r:
            assert r.status == 401
    # Nothing the refused requests asked for happened.
    names = {i["name"] for i in (await demo("images.list", {}))["images"]}
    assert "x" not in names and "renamed" not in names

    await asyncio.to_thread(lambda: conn.image.delete_image(made.id))
    left = await asyncio.to_thread(lambda: [i.name for i in conn.image.images()])
    assert "sdk-img" not in left and len(left) == 7


async def test_an_interrupted_upload_leaves_the_image_queued_for_another(cloud: Deployment) -> None:
    rest = await start_rest(cloud)
    demo = ApiClient(await cloud.connect("demo"))
    async with aiohttp.ClientSession() as http:
        auth = {
            "X-Auth-Token": await token(http, rest, "demo", cloud.server.passwords["demo"], "DEMO")
        }
        images = f"{image_url(rest)}/v2/images"
        async with http.post(images, json={"name": "big", "disk_format": "raw"}, headers=auth) as r:
            assert r.status == 201
            made = await r.json()
        assert (made["status"], made["visibility"], made["owner"]) == ("queued", "private", "DEMO")

        async def record() -> dict[str, Any]:
            return (await demo("images.get", {"id": made["id"]}))["image"]

        # A client that announces 2 MB, sends 600 KB and goes away.
        assert rest.current is not None
        _, writer = await asyncio.open_connection(rest.current.address, rest.current.port)
        head = (
            f"PUT /image/v2/images/{made['id']}/file HTTP/1.1\r\nHost: hvmesh\r\n"
            f"X-Auth-Token: {auth['X-Auth-Token']}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 2000000\r\n\r\n"
        )
        writer.write(head.encode() + os.urandom(600 * 1024))
        await writer.drain()
        await until(
            lambda: record_has(record, lambda i: i["uploaded"] >= 512 * 1024),
            what="the first chunks to reach the API",
        )
        writer.close()
        await until(
            lambda: record_has(record, lambda i: (i["status"], i["uploaded"]) == ("queued", 0)),
            what="the half-sent image to be queued again",
        )

        data = os.urandom(100 * 1024)
        put = {**auth, "Content-Type": "application/octet-stream"}
        async with http.put(f"{images}/{made['id']}/file", data=data, headers=put) as r:
            assert r.status == 204, await r.text()
        image = await record()
        assert (image["status"], image["size"]) == ("active", len(data))
        assert image["checksum"] == hashlib.sha256(data).hexdigest()
        async with http.put(
            f"{images}/{made['id']}/file", data=data, headers={**auth, "Content-Type": "text/plain"}
        ) as r:
            assert r.status == 415


async def record_has(record: Any, check: Any) -> bool:
    return bool(check(await record()))
