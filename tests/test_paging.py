"""Paged lists: servers.list walks 20,000 servers from the index while servers come and go,
its filters, limit and marker errors, other lists' paging, and the CLI walking every page."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any

import pytest

from hvmesh.core.api.service import ApiService
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import encode
from hvmesh.core.protocol.records import Flavor, Server
from tests.support import ApiClient, Deployment, hvmesh

TINY = Flavor(id="flavor-tiny", name="m1.tiny", vcpus=1, ram_mb=64, disk_gb=1)
BIG = Flavor(id="flavor-big", name="m1.big", vcpus=8, ram_mb=8192, disk_gb=80)
BASE_TIME = 1_700_000_000.0


async def start_api(dep: Deployment, **sections: dict[str, Any]) -> ApiService:
    """The API service alone: these tests write servers straight into the bucket."""
    nc = await dep.service_connection()
    dep.connections.append(nc)
    api = ApiService(nc, dep.config(**sections))
    await dep.start(api)
    return api


def make_server(n: int, project: str = "admin", **fields: Any) -> Server:
    created = fields.pop("created_at", BASE_TIME + n)
    return Server(
        id=fields.pop("id", str(uuid.uuid4())),
        name=fields.pop("name", f"vm-{n}"),
        project=project,
        user="u",
        flavor=fields.pop("flavor", TINY),
        image_id=fields.pop("image_id", "image-cirros"),
        image_name=fields.pop("image_name", "cirros"),
        vm_state=fields.pop("vm_state", "active"),
        task_state=fields.pop("task_state", None),
        created_at=created,
        updated_at=fields.pop("updated_at", created),
        **fields,
    )


async def put_all(dep: Deployment, servers: list[Server], batch: int = 500) -> None:
    """Write servers into the bucket, `batch` writes in flight at a time."""
    kv = dep.store.servers.kv
    for i in range(0, len(servers), batch):
        await asyncio.gather(*(kv.put(s.id, encode(s)) for s in servers[i : i + batch]))


async def walk(client: ApiClient, body: dict[str, Any], between: Any = None) -> list[list[dict]]:
    """Every page of servers.list, calling `between(page)` after each but the last."""
    pages: list[list[dict]] = []
    marker = None
    while True:
        reply = await client("servers.list", {**body, **({"marker": marker} if marker else {})})
        pages.append(reply["servers"])
        links = reply.get("servers_links")
        if not links:
            return pages
        assert links == [{"rel": "next", "marker": reply["servers"][-1]["id"]}]
        marker = links[0]["marker"]
        assert len(pages) < 1000, "the walk does not end"
        if between is not None:
            await between(reply["servers"])


async def test_paging_walks_20000_servers_while_servers_come_and_go(
    deployment: Deployment, admin: ApiClient
) -> None:
    base = [make_server(n) for n in range(20_000)]
    await put_all(deployment, base[:10_000])
    api = await start_api(deployment)  # loads the first half, watches the second come
    await put_all(deployment, base[10_000:])
    base_ids = {s.id for s in base}
    transient: set[str] = set()
    rng = random.Random(17)
    stop = asyncio.Event()

    deleted_markers: list[str] = []

    async def churn_now(n: int) -> None:
        """Servers created anywhere in the order, deleted again, others updated."""
        fresh = [
            make_server(0, created_at=BASE_TIME + rng.uniform(0, 20_000), name="transient")
            for _ in range(n)
        ]
        await put_all(deployment, fresh)
        transient.update(s.id for s in fresh)
        for sid in rng.sample(sorted(transient), min(len(transient), n // 2)):
            await deployment.store.servers.delete(sid)
        for s in rng.sample(base, n):
            if s.id in deleted_markers:
                continue
            changed = Server(**{**_fields(s), "vm_state": "stopped", "updated_at": time.time()})
            await deployment.store.servers.put(s.id, changed)

    async def churn_meanwhile() -> None:
        while not stop.is_set():
            await churn_now(10)

    async def between(page: list[dict]) -> None:
        await churn_now(40)
        last = page[-1]["id"]
        if last in base_ids and len(deleted_markers) < 5:
            # The marker itself is gone before the next page is asked for.
            await deployment.store.servers.delete(last)
            deleted_markers.append(last)

    background = asyncio.create_task(churn_meanwhile())
    try:
        pages = await walk(admin, {"limit": 1000}, between)
    finally:
        stop.set()
        await background
    seen = [s["id"] for page in pages for s in page]
    assert len(seen) == len(set(seen)), "a server was listed twice"
    assert base_ids <= set(seen), f"{len(base_ids - set(seen))} servers were missed"
    assert set(seen) <= base_ids | transient
    assert all(len(page) == 1000 for page in pages[:-1])
    assert len(pages) == -(-len(seen) // 1000)
    assert len(deleted_markers) == 5
    assert len(api.compute.servers_index) >= 20_000 - 5


async def test_a_page_stops_short_of_the_max_payload(
    deployment: Deployment, admin: ApiClient
) -> None:
    await start_api(deployment)
    fat = [make_server(n, metadata={"blob": "x" * 700_000}) for n in range(12)]
    await put_all(deployment, fat, batch=4)
    limit = deployment.nc.max_payload
    pages, marker = [], None
    while True:
        body = {"marker": marker} if marker else {}
        msg = await admin.raw("servers.list", json.dumps(body).encode())
        assert len(msg.data) < limit * 0.6, "a page came near NATS's max payload"
        reply = json.loads(msg.data)
        pages.append([s["id"] for s in reply["servers"]])
        if "servers_links" not in reply:
            break
        marker = reply["servers_links"][0]["marker"]
    assert len(pages) > 2
    assert [sid for page in pages for sid in page] == [s.id for s in fat]


async def test_server_filters(deployment: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await start_api(deployment)
    now = time.time()
    servers = [
        make_server(1, name="web-1", host="h1"),
        make_server(2, name="web-2", host="h2", vm_state="stopped", flavor=BIG),
        make_server(3, name="db-1", host="h1", image_id="image-ubuntu", image_name="ubuntu"),
        make_server(4, name="web-old", updated_at=now - 7200),
        make_server(5, project="DEMO", name="web-demo", host="h1"),
        make_server(6, project="OTHER", name="web-other", host="h2"),
    ]
    for i, s in enumerate(servers):
        if i != 3:
            servers[i] = Server(**{**_fields(s), "updated_at": now})
    await put_all(deployment, servers)
    ids = {s.name: s.id for s in servers}

    async def names(client: ApiClient = admin, **body: Any) -> list[str]:
        return [s["name"] for s in (await client("servers.list", body))["servers"]]

    assert await names() == ["web-1", "web-2", "db-1", "web-old"]
    assert await names(sort_dir="desc") == ["web-old", "db-1", "web-2", "web-1"]
    assert await names(status="shutoff") == ["web-2"]
    assert await names(status="ACTIVE") == ["web-1", "db-1", "web-old"]
    assert await names(host="h1") == ["web-1", "db-1"]
    assert await names(host="h1", all_projects=True) == ["web-1", "db-1", "web-demo"]
    assert await names(name=r"^web-\d+$") == ["web-1", "web-2"]
    assert await names(name=".*eb-.*") == ["web-1", "web-2", "web-old"]
    assert await names(flavor="m1.big") == ["web-2"]
    assert await names(flavor="flavor-tiny") == ["web-1", "db-1", "web-old"]
    assert await names(image="ubuntu") == ["db-1"]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
    assert await names(changes_since=since) == ["web-1", "web-2", "db-1"]
    assert await names(changes_since=now - 3600) == ["web-1", "web-2", "db-1"]
    assert await names(all_projects=True, project="OTHER") == ["web-other"]
    assert len(await names(all_projects=True)) == 6
    assert await names(client=demo) == ["web-demo"]
    assert await names(client=demo, name="web") == ["web-demo"]
    # Combined, and paged by the filtered order.
    first = await admin("servers.list", {"name": "^web", "limit": 1, "all_projects": True})
    assert [s["id"] for s in first["servers"]] == [ids["web-1"]]
    assert first["servers_links"] == [{"rel": "next", "marker": ids["web-1"]}]
    rest = await names(name="^web", all_projects=True, marker=ids["web-1"])
    assert rest == ["web-2", "web-old", "web-demo", "web-other"]

    for body, text in [
        ({"name": "(a+)+$"}, "repeats a group"),
        ({"name": "a*b*"}, "repeats more than once"),
        ({"name": r"(a)\1"}, "backreference"),
        ({"name": "web("}, "is not a regular expression"),
        ({"name": "x" * 256}, "$.name"),
        ({"changes_since": "yesterday"}, "changes_since: 'yesterday' is neither ISO 8601"),
        ({"project": "OTHER"}, "project: only together with all_projects"),
        ({"sort_dir": "up"}, "$.sort_dir"),
    ]:
        with pytest.raises(errors.BadRequest, match=_escape(text)):
            await admin("servers.list", body)
    for body in ({"all_projects": True}, {"host": "h1"}):
        with pytest.raises(errors.Forbidden):
            await demo("servers.list", body)


async def test_limit_and_marker(deployment: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await start_api(deployment, api={"max_limit": 3})
    mine = [make_server(n) for n in range(7)]
    theirs = make_server(100, project="DEMO")
    await put_all(deployment, [*mine, theirs])
    # Above the maximum is cut to it; the default is the maximum.
    for body in ({"limit": 50}, {}):
        reply = await admin("servers.list", body)
        assert [s["id"] for s in reply["servers"]] == [s.id for s in mine[:3]]
        assert reply["servers_links"] == [{"rel": "next", "marker": mine[2].id}]
    assert await admin("servers.list", {"limit": 0}) == {"servers": []}
    two = await admin("servers.list", {"limit": 2, "marker": mine[4].id})
    assert [s["id"] for s in two["servers"]] == [mine[5].id, mine[6].id]
    assert "servers_links" not in two  # nothing follows
    for body, error, text in [
        ({"marker": "no-such-server"}, errors.BadRequest, "marker no-such-server not found"),
        ({"limit": -1}, errors.BadRequest, "$.limit"),
        ({"limit": "ten"}, errors.BadRequest, "$.limit"),
        ({"marker": ""}, errors.BadRequest, "$.marker"),
    ]:
        with pytest.raises(error, match=_escape(text)):
            await admin("servers.list", body)
    # Another project's server is no marker for a tenant: as if it did not exist.
    with pytest.raises(errors.BadRequest, match=f"marker {mine[0].id} not found"):
        await demo("servers.list", {"marker": mine[0].id})
    # A marker deleted since its page came still marks the place.
    await deployment.store.servers.delete(mine[2].id)
    after = await admin("servers.list", {"marker": mine[2].id})
    assert [s["id"] for s in after["servers"]] == [s.id for s in mine[3:6]]


async def test_other_lists_page(deployment: Deployment, admin: ApiClient, demo: ApiClient) -> None:
    await start_api(deployment, api={"max_limit": 2})
    for i in range(5):
        await admin(
            "flavors.create",
            {
                "name": f"f{i}",
                "vcpus": 1,
                "ram_mb": 128 * (i + 1),
                "disk_gb": i,
                "is_public": i != 4,
            },
        )
    for i in range(3):
        await demo("images.create", {"name": f"img{i}", "visibility": "private"})
    await demo("images.create", {"name": "later", "visibility": "private", "upload": True})
    for i in range(3):
        await demo("server_groups.create", {"name": f"g{i}", "policy": "affinity"})

    async def every(client: ApiClient, verb: str, key: str, **body: Any) -> list[list[str]]:
        pages, marker = [], None
        while True:
            reply = await client(verb, {**body, **({"marker": marker} if marker else {})})
            pages.append([r["name"] for r in reply[key]])
            if f"{key}_links" not in reply:
                return pages
            marker = reply[f"{key}_links"][0]["marker"]

    assert await every(admin, "flavors.list", "flavors") == [["f0", "f1"], ["f2", "f3"], ["f4"]]
    assert await every(demo, "flavors.list", "flavors") == [["f0", "f1"], ["f2", "f3"]]
    assert await every(admin, "flavors.list", "flavors", min_ram=300, is_public=True) == [
        ["f2", "f3"]
    ]
    assert await every(admin, "flavors.list", "flavors", min_disk=4) == [["f4"]]
    assert await every(demo, "images.list", "images") == [["img0", "img1"], ["img2", "later"]]
    assert await every(demo, "images.list", "images", status="queued") == [["later"]]
    assert await every(demo, "images.list", "images", name="img1") == [["img1"]]
    assert await every(demo, "server_groups.list", "server_groups") == [["g0", "g1"], ["g2"]]
    with pytest.raises(errors.BadRequest, match="marker nope not found"):
        await demo("images.list", {"marker": "nope"})
    with pytest.raises(errors.BadRequest, match="marker nope not found"):
        await admin("aggregates.list", {"marker": "nope"})


async def test_the_cli_walks_every_page(deployment: Deployment) -> None:
    await start_api(deployment, api={"max_limit": 1000})
    servers = [make_server(n, name=f"cli-{n}") for n in range(2500)]
    servers[7] = make_server(7, name="cli-7", vm_state="stopped")
    await put_all(deployment, servers)
    auth = ["--url", deployment.server.address, "--user", "admin"]
    auth += ["--password", deployment.server.passwords["admin"]]

    code, out, err = await hvmesh("server", "list", "-f", "json", "-c", "id", *auth)
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == [s.id for s in servers]
    assert "2000 servers so far" in err

    code, out, err = await hvmesh("server", "list", "-f", "json", "--limit", "10", *auth)
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == [s.id for s in servers[:10]]
    assert f"--marker {servers[9].id}" in err
    argv = ["server", "list", "-f", "json", "--limit", "5", "--marker", servers[9].id]
    code, out, err = await hvmesh(*argv, *auth)
    assert [r["id"] for r in json.loads(out)] == [s.id for s in servers[10:15]]
    code, out, err = await hvmesh("server", "list", "-f", "json", "--status", "SHUTOFF", *auth)
    assert [r["name"] for r in json.loads(out)] == ["cli-7"]
    argv = ["server", "list", "-f", "json", "--changes-since", "2100-01-01T00:00:00Z"]
    code, out, err = await hvmesh(*argv, *auth)
    assert code == 0, err
    assert json.loads(out) == []
    code, out, err = await hvmesh("server", "list", "--changes-since", "soon", *auth)
    assert code == 1 and "changes_since: 'soon' is neither ISO 8601" in err


def _fields(s: Server) -> dict[str, Any]:
    return {f: getattr(s, f) for f in s.__struct_fields__}


def _escape(text: str) -> str:
    import re

    return re.escape(text)


async def test_server_events_page(deployment: Deployment, admin: ApiClient) -> None:
    await start_api(deployment)
    s = make_server(1)
    await put_all(deployment, [s])
    for state in ("error", "active", "error"):
        await admin("servers.action", {"id": s.id, "action": "reset-state", "state": state})
    first = await admin("servers.events.list", {"id": s.id, "limit": 2})
    assert len(first["instance_actions"]) == 2
    marker = first["instance_actions_links"][0]["marker"]
    assert marker == first["instance_actions"][-1]["request_id"]
    rest = await admin("servers.events.list", {"id": s.id, "marker": marker})
    assert len(rest["instance_actions"]) == 1
    assert "instance_actions_links" not in rest
    every = {a["request_id"] for a in first["instance_actions"] + rest["instance_actions"]}
    assert len(every) == 3


def test_a_filter_that_keeps_nothing_ends_its_page_early() -> None:
    from hvmesh.core.api import paging

    items = list(range(10_000))
    scan = paging.Scan(items, lambda i: False, seconds=0.0)  # out of time at the first check
    rows, more = paging.take(scan, 1000, 1 << 20, str, lambda i: i)
    assert rows == [] and more is None
    assert scan.cut == 254  # the last one looked at: the next page starts after it
    kept = paging.Scan(items, lambda i: i % 2 == 0, seconds=3600.0)
    rows, more = paging.take(kept, 1000, 1 << 20, str, lambda i: i)
    assert rows == list(range(0, 2000, 2)) and more == "1998"
    assert kept.cut is None


def test_the_index_keeps_its_order_through_changes() -> None:
    from hvmesh.core.state.server_index import ServerIndex

    index = ServerIndex(tombstones=2)
    a, b, c = (make_server(n, project=p) for n, p in ((1, "P"), (2, "Q"), (3, "P")))
    index.apply(b.id, b, 1)
    index.place_all()
    index.apply(c.id, c, 2)
    index.apply(a.id, a, 3)
    assert [s.id for s in index.walk(None)] == [a.id, b.id, c.id]
    assert [s.id for s in index.walk("P")] == [a.id, c.id]
    assert [s.id for s in index.walk(None, reverse=True)] == [c.id, b.id, a.id]
    moved = Server(**{**_fields(a), "project": "Q", "created_at": BASE_TIME + 9})
    index.apply(a.id, moved, 4)
    index.apply(a.id, a, 3)  # an older revision changes nothing
    assert [s.id for s in index.walk("Q")] == [b.id, a.id]
    assert [s.id for s in index.walk("P")] == [c.id]
    index.apply(b.id, None, 5)
    assert index.place_of(b.id, "Q") == (b.created_at, b.id)  # deleted, still a place
    assert index.place_of(b.id, "P") is None  # not for another project
    assert [s.id for s in index.walk("Q", index.place_of(b.id, "Q"))] == [a.id]
    for s in (a, c):
        index.apply(s.id, None, 6)
    assert index.place_of(b.id, None) is None  # only the newest two deletions are kept
    assert list(index.walk(None)) == [] and len(index) == 0
