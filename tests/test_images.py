"""Images: uploaded through the CLI into the object store, checked, cached by agents, booted."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from nats.js.errors import ObjectNotFoundError

from hvmesh.agents.fake.driver import FakeDriver
from hvmesh.agents.image_cache import ImageCache
from hvmesh.agents.runtime import AgentRuntime
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.subjects import IMAGE_STORE
from hvmesh.core.state import image_data
from tests.support import ApiClient, Cli, Deployment, gone, settled, wait_all


def image_file(tmp_path: Path, size: int = 700_000) -> tuple[Path, str]:
    """A file of random bytes spanning several upload chunks, and its sha256."""
    data = os.urandom(size)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def agents(dep: Deployment) -> list[AgentRuntime]:
    return [c for c in dep.components if isinstance(c, AgentRuntime)]


async def test_cli_upload_stores_verified_bytes(cloud: Deployment, tmp_path: Path) -> None:
    path, sha = image_file(tmp_path)
    cli = Cli(cloud)
    image = await cli.json(
        "image",
        "create",
        "debian",
        "--file",
        str(path),
        "--disk-format",
        "raw",
        "--property",
        "os_distro=debian",
    )
    assert image["status"] == "active"
    assert image["checksum"] == sha and image["size"] == path.stat().st_size
    assert image["properties"] == {"os_distro": "debian"}
    # What `nats object get image_data <id>` reads: nats.py checks the digest itself.
    store = await cloud.nc.jetstream().object_store(IMAGE_STORE)
    got = await store.get(image["id"])
    assert got.data == path.read_bytes()
    listed = await cli.json("image", "list")
    assert [(i["name"], i["status"]) for i in listed] == [("debian", "active")]


async def test_upload_with_wrong_checksum_is_refused_and_discarded(
    cloud: Deployment, admin: ApiClient
) -> None:
    image = (await admin("images.create", {"name": "bad", "upload": True}))["image"]
    assert image["status"] == "queued"
    headers = {"Hvmesh-Image": image["id"], "Hvmesh-Offset": "0"}
    await admin("images.upload", b"x" * 1000, headers=headers)
    with pytest.raises(errors.Conflict, match="chunk at offset 2000, expected 1000"):
        await admin("images.upload", b"y", headers={**headers, "Hvmesh-Offset": "2000"})
    with pytest.raises(errors.BadRequest, match="upload does not match"):
        await admin("images.upload_finish", {"id": image["id"], "size": 1000, "sha256": "0" * 64})
    after = (await admin("images.get", {"id": image["id"]}))["image"]
    assert (after["status"], after["uploaded"]) == ("queued", 0)
    assert [c async for c in image_data.read_chunks(cloud.nc.jetstream(), image["id"])] == []
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 256, "disk_gb": 1})
    with pytest.raises(errors.BadRequest, match="is queued: upload its data first"):
        await admin("servers.create", {"name": "s", "flavor": "m1.small", "image": "bad"})
    # The same bytes sent again at once are stored (not taken for repeats of the
    # discarded upload's), and a retried chunk (its reply lost) is taken once.
    await admin("images.upload", b"x" * 1000, headers=headers)
    again = await admin("images.upload", b"x" * 1000, headers=headers)
    assert again["uploaded"] == 1000
    sha = hashlib.sha256(b"x" * 1000).hexdigest()
    done = await admin("images.upload_finish", {"id": image["id"], "size": 1000, "sha256": sha})
    assert done["image"]["status"] == "active" and done["image"]["size"] == 1000


async def test_boots_from_each_hosts_cache_downloading_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    await deployment.start_core(fake_hosts=2)
    admin = ApiClient(await deployment.connect("admin"))
    path, sha = image_file(tmp_path)
    image = await Cli(deployment).json(
        "image", "create", "debian", "--file", str(path), "--disk-format", "raw"
    )
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 256, "disk_gb": 1})
    # Six servers at once over two hosts: concurrent boots of one image on each host.
    reply = await admin(
        "servers.create",
        {"name": "vm", "flavor": "m1.small", "image": "debian", "min_count": 6},
    )
    ids = [s["id"] for s in reply["servers"]]
    servers = list((await wait_all(deployment.store, set(ids), settled)).values())
    assert all(s is not None and s.vm_state == "active" for s in servers), servers
    hosts = {s.host for s in servers if s is not None}
    for agent in agents(deployment):
        assert agent.images is not None
        if agent.host not in hosts:
            continue
        assert agent.images.downloads == 1, agent.host  # once per host, however many boots
        cached = agent.images.path(sha)
        assert cached.read_bytes() == path.read_bytes()
        driver = agent.driver
        assert isinstance(driver, FakeDriver)
        for s in servers:
            if s is not None and s.host == agent.host:
                assert driver.disks[s.id] == cached

    # The image is in use: it cannot be deleted until its servers are gone.
    with pytest.raises(errors.Conflict, match="in use by server"):
        await admin("images.delete", {"id": "debian"})
    for server_id in ids:
        await admin("servers.delete", {"id": server_id})
    await wait_all(deployment.store, set(ids), gone)
    await admin("images.delete", {"id": "debian"})
    store = await deployment.nc.jetstream().object_store(IMAGE_STORE)
    with pytest.raises(ObjectNotFoundError):
        await store.get_info(image["id"])


async def test_cache_evicts_least_recently_used_unpinned(
    deployment: Deployment, tmp_path: Path
) -> None:
    cache = ImageCache(
        deployment.nc.jetstream(), deployment.store, tmp_path / "cache", max_bytes=2500
    )
    cache.dir.mkdir()
    for i, name in enumerate(["a" * 64, "b" * 64, "c" * 64]):
        p = cache.path(name)
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + i, 1000 + i))  # a is the least recently used
    cache.pin("server-1", {"a" * 64})
    assert cache.trim() == ["b" * 64]  # a is pinned: b goes, and 2000 bytes fit
    assert sorted(p.name for p in cache.cached()) == ["a" * 64, "c" * 64]
    cache.unpin("server-1")
    cache.max_bytes = 1000
    assert cache.trim(keep={"c" * 64}) == ["a" * 64]


async def test_fetch_rejects_bytes_that_do_not_match(cloud: Deployment, admin: ApiClient) -> None:
    js = cloud.nc.jetstream()
    image = (await admin("images.create", {"name": "img", "upload": True}))["image"]
    await admin(
        "images.upload", b"hello", headers={"Hvmesh-Image": image["id"], "Hvmesh-Offset": "0"}
    )
    sha = hashlib.sha256(b"hello").hexdigest()
    await admin("images.upload_finish", {"id": image["id"], "size": 5, "sha256": sha})
    entry = await cloud.store.images.get(image["id"])
    assert entry is not None
    # The record claims other bytes than the store holds (as after tampering).
    tampered = entry.value.__class__(**{**_fields(entry.value), "checksum": "f" * 64})
    cache = ImageCache(js, cloud.store, cloud.tmp / "cache")
    with pytest.raises(ValueError, match="downloaded bytes have sha256"):
        await cache.fetch(tampered)
    assert cache.cached() == [] and not list((cloud.tmp / "cache").glob(".*part"))
    good = await asyncio.wait_for(cache.fetch(entry.value), 30)
    assert good.read_bytes() == b"hello"


def _fields(record: object) -> dict:
    return {f: getattr(record, f) for f in record.__struct_fields__}  # type: ignore[attr-defined]


async def test_an_image_is_renamed_and_its_properties_changed(
    cloud: Deployment, admin: ApiClient
) -> None:
    demo = ApiClient(await cloud.connect("demo"))
    body = {"name": "img", "visibility": "private", "properties": {"a": "1"}}
    image = (await demo("images.create", body))["image"]
    change = {
        "id": image["id"],
        "name": "img2",
        "min_ram_mb": 128,
        "properties": {"a": None, "b": "2"},
    }
    done = (await demo("images.update", change))["image"]
    assert (done["name"], done["min_ram_mb"], done["properties"]) == ("img2", 128, {"b": "2"})

    # Refused, and nothing changed: formats of an image with data, making it public (the
    # admin's), another project's image, nothing to do.
    with pytest.raises(errors.Conflict, match="its formats are set"):
        await demo("images.update", {"id": image["id"], "disk_format": "raw"})
    with pytest.raises(errors.Forbidden):
        await demo("images.update", {"id": image["id"], "visibility": "public"})
    with pytest.raises(errors.NotFound):
        await ApiClient(await cloud.connect("alt"))(
            "images.update", {"id": image["id"], "name": "x"}
        )
    with pytest.raises(errors.BadRequest, match="nothing to update"):
        await demo("images.update", {"id": image["id"]})
    assert (await demo("images.get", {"id": image["id"]}))["image"] == done

    cli = Cli(cloud)
    await cli.ok("image", "set", image["id"], "--public", "--property", "c=3")
    shown = await cli.json("image", "unset", image["id"], "--property", "b")
    assert (shown["visibility"], shown["properties"]) == ("public", {"c": "3"})
