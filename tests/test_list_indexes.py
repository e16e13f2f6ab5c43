"""List endpoints other than servers.list read in-memory indexes: ports.list walks 5,000
ports written straight into the bucket while ports come and go, a record written just
before a list shows in it, and each list keeps its order and who sees what."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from hvmesh.core.api.list_indexes import SHARED
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import encode
from hvmesh.core.protocol.records import Keypair, Network, Port
from hvmesh.core.state.record_index import RecordIndex
from tests.support import ApiClient, Deployment
from tests.test_paging import start_api

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl q"


def make_port(n: int, project: str = "admin", network: str = "net-b") -> Port:
    return Port(
        id=str(uuid.uuid4()),
        name=f"p{n}",
        network_id=network,
        project=project,
        mac=f"fa:16:3e:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
        ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
    )


async def put_ports(dep: Deployment, ports: list[Port], batch: int = 500) -> None:
    kv = dep.store.ports.kv
    for i in range(0, len(ports), batch):
        await asyncio.gather(*(kv.put(p.id, encode(p)) for p in ports[i : i + batch]))


async def every(client: ApiClient, verb: str, key: str, between: Any = None, **body: Any) -> list:
    """Every page of a list, calling `between()` after each but the last."""
    pages: list[list[dict]] = []
    marker = None
    while True:
        reply = await client(verb, {**body, **({"marker": marker} if marker else {})})
        pages.append(reply[key])
        links = reply.get(f"{key}_links")
        if not links:
            return pages
        marker = links[0]["marker"]
        assert len(pages) < 1000, "the walk does not end"
        if between is not None:
            await between()


async def test_ports_list_walks_5000_ports_while_ports_come_and_go(
    deployment: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    base = [make_port(n) for n in range(5_000)]
    await put_ports(deployment, base[:2_500])
    api = await start_api(deployment)  # loads the first half, watches the second come
    await put_ports(deployment, base[2_500:])
    project = (await demo("server_groups.create", {"name": "g", "policy": "affinity"}))[
        "server_group"
    ]["project"]
    theirs = [make_port(n, project=project, network="net-c") for n in range(30)]
    await put_ports(deployment, theirs)
    transient: set[str] = set()
    rng = random.Random(5)

    async def churn() -> None:
        """Ports written anywhere in the order, and some of them deleted again."""
        nets = ("net-b", "net-bb", "net-c")
        fresh = [make_port(rng.randrange(1 << 20), network=rng.choice(nets)) for _ in range(20)]
        await put_ports(deployment, fresh)
        transient.update(p.id for p in fresh)
        for port_id in rng.sample(sorted(transient), 10):
            await deployment.store.ports.delete(port_id)

    pages = await every(admin, "ports.list", "ports", churn, limit=400)
    seen = [p["id"] for page in pages for p in page]
    assert len(seen) == len(set(seen)), "a port was listed twice"
    base_ids = {p.id for p in base} | {p.id for p in theirs}
    assert base_ids <= set(seen), f"{len(base_ids - set(seen))} ports were missed"
    assert set(seen) <= base_ids | transient
    assert all(len(page) == 400 for page in pages[:-1])
    order = [(p["network_id"], p["ip"], p["id"]) for page in pages for p in page]
    kept = [o for o in order if o[2] in base_ids]
    assert kept == sorted(kept), "the pages are out of order"
    assert len(api.lists.ports) >= 5_030

    # A tenant walks its own ports alone, in order.
    mine = await every(demo, "ports.list", "ports", limit=7)
    assert [p["id"] for page in mine for p in page] == [
        p.id for p in sorted(theirs, key=lambda p: (p.network_id, p.ip, p.id))
    ]
    with pytest.raises(errors.BadRequest, match=f"marker {base[0].id} not found"):
        await demo("ports.list", {"marker": base[0].id})

    # A port written straight into the bucket shows in the very next list.
    first = make_port(1, network="net-0")
    await deployment.store.ports.kv.put(first.id, encode(first))
    reply = await admin("ports.list", {"limit": 1})
    assert reply["ports"][0]["id"] == first.id
    # One deleted since it was a marker still marks the place.
    await deployment.store.ports.delete(first.id)
    after = await admin("ports.list", {"marker": first.id, "limit": 1})
    assert after["ports"] == (await admin("ports.list", {"limit": 1}))["ports"]


async def test_networks_keypairs_and_images_keep_who_sees_what(
    deployment: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await start_api(deployment, api={"max_limit": 2})
    made = (await demo("keypairs.create", {"name": "k-b", "public_key": KEY}))["keypair"]
    project, user = made["project"], made["user"]
    kv = deployment.store.keypairs.kv
    for name, owner in (("k-a", user), ("k-c", user), ("k-d", user), ("k-0", "someone")):
        keypair = Keypair(
            id=str(uuid.uuid4()),
            name=name,
            project=project,
            user=owner,
            public_key=KEY,
            fingerprint="f",
        )
        await kv.put(keypair.id, encode(keypair))
    pages = await every(demo, "keypairs.list", "keypairs")
    assert [[k["name"] for k in page] for page in pages] == [["k-a", "k-b"], ["k-c", "k-d"]]
    assert await admin("keypairs.list", {}) == {"keypairs": []}  # keypairs are the user's
    with pytest.raises(errors.BadRequest, match="marker k-0 not found"):
        await demo("keypairs.list", {"marker": "k-0"})

    nets = deployment.store.networks.kv
    for name, owner, shared in (
        ("n-a", project, False),
        ("n-b", "other", True),
        ("n-c", "other", False),
        ("n-d", project, True),
        ("n-e", "other", True),
    ):
        network = Network(
            id=str(uuid.uuid4()),
            name=name,
            project=owner,
            cidr="10.0.0.0/24",
            gateway=None,
            shared=shared,
        )
        await nets.put(network.id, encode(network))
    pages = await every(demo, "networks.list", "networks")
    assert [[n["name"] for n in page] for page in pages] == [["n-a", "n-b"], ["n-d", "n-e"]]
    pages = await every(admin, "networks.list", "networks")
    assert [n["name"] for page in pages for n in page] == ["n-a", "n-b", "n-c", "n-d", "n-e"]

    await admin("images.create", {"name": "i-a", "visibility": "public"})
    await admin("images.create", {"name": "i-b", "visibility": "private"})
    await demo("images.create", {"name": "i-c", "visibility": "private"})
    pages = await every(demo, "images.list", "images")
    assert [i["name"] for page in pages for i in page] == ["i-a", "i-c"]
    pages = await every(admin, "images.list", "images")
    assert [i["name"] for page in pages for i in page] == ["i-a", "i-b", "i-c"]


def test_a_merged_walk_lists_a_record_of_two_groups_once() -> None:
    index = RecordIndex[Network](
        "network_index",
        lambda n: (n.name, n.id),
        lambda n: (n.project, SHARED) if n.shared else (n.project,),
        tombstones=1,
    )
    a = Network(id="a", name="x", project="P", cidr="10.0.0.0/24", gateway=None, shared=True)
    b = Network(id="b", name="y", project="Q", cidr="10.0.0.0/24", gateway=None, shared=True)
    c = Network(id="c", name="z", project="Q", cidr="10.0.0.0/24", gateway=None)
    index.apply(a.id, a, 1)
    index.place_all()
    index.apply(c.id, c, 2)
    index.apply(b.id, b, 3)
    assert [n.id for n in index.iterate(("P", SHARED))] == ["a", "b"]
    assert [n.id for n in index.iterate(("P", SHARED), reverse=True)] == ["b", "a"]
    assert [n.id for n in index.iterate(None)] == ["a", "b", "c"]
    assert index.locate("c", ("P", SHARED)) is None  # not for P to see
    index.apply(b.id, None, 4)
    assert index.locate("b", ("P", SHARED)) == ("y", "b")  # deleted, still a place
    assert [n.id for n in index.iterate(("Q",), index.locate("b", ("Q",)))] == ["c"]
