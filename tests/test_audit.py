"""`hvmesh manage audit`: each kind of inconsistency is found, healed, and gone after."""

from __future__ import annotations

import json

import msgspec

from hvmesh.core.ops import audit
from hvmesh.core.protocol.records import Host
from tests.support import ApiClient, Deployment, make_flavor_image, settled, wait_server
from tests.test_cli import Cli, hvmesh


async def boot(dep: Deployment, admin: ApiClient, name: str) -> str:
    sid = (await admin("servers.create", {"name": name, "flavor": "m1.small", "image": "cirros"}))[
        "server"
    ]["id"]
    await wait_server(dep.store, sid, settled)
    return sid


async def test_audit_finds_and_heals(cloud: Deployment, admin: ApiClient) -> None:
    store = cloud.store
    assert store is not None
    await make_flavor_image(admin, vcpus=1, ram=512, disk=1)
    lost, shrunk, doubled = [await boot(cloud, admin, n) for n in ("lost", "shrunk", "doubled")]
    servers = {s.id: s for s in await store.servers.values()}
    other = next(h.name for h in await store.hosts.values() if h.name != servers[doubled].host)

    def damage(record: Host) -> Host:
        allocs = dict(record.allocations)
        allocs.pop(lost, None)  # missing
        if shrunk in allocs:
            allocs[shrunk] = {"VCPU": 1, "MEMORY_MB": 1, "DISK_GB": 1}  # mismatch
        if record.name == other:
            allocs[doubled] = servers[doubled].flavor.resources()  # double
            allocs["ghost"] = {"VCPU": 1}  # leaked
        return msgspec.structs.replace(record, allocations=allocs)

    for host in await store.hosts.values():
        await store.hosts.mutate(host.name, damage)

    cli = Cli(cloud)
    code, out, err = await hvmesh("manage", "audit", "-f", "json", *cli.auth)
    assert code == 1 and "4 finding(s) left; --heal fixes all but overcommit" in err
    kinds = {(f["kind"], f["server_id"]) for f in json.loads(out)}
    assert kinds == {
        ("missing", lost),
        ("mismatch", shrunk),
        ("double", doubled),
        ("leaked", "ghost"),
    }
    assert {f["host"] for f in json.loads(out) if f["kind"] == "double"} == {other}

    healed = json.loads(await cli.ok("manage", "audit", "--heal", "-f", "json"))
    assert len(healed) == 4 and all(f["healed"] for f in healed)
    assert await audit.audit(store) == []
    assert (await cli.ok("manage", "audit")).strip() == "audit: clean"
    for sid in (lost, shrunk, doubled):
        server = (await store.servers.get(sid)).value
        host = (await store.hosts.get(server.host)).value
        assert host.allocations[sid] == server.flavor.resources()
    assert doubled not in (await store.hosts.get(other)).value.allocations


async def test_audit_reports_overcommit_without_healing_it(
    cloud: Deployment, admin: ApiClient
) -> None:
    store = cloud.store
    assert store is not None
    await make_flavor_image(admin, vcpus=1, ram=512, disk=1)
    sid = await boot(cloud, admin, "real")
    name = (await store.servers.get(sid)).value.host

    def shrink(record: Host) -> Host:
        inventories = dict(record.inventories)
        inventories["MEMORY_MB"] = msgspec.structs.replace(inventories["MEMORY_MB"], total=256)
        return msgspec.structs.replace(record, inventories=inventories)

    await store.hosts.mutate(name, shrink)
    found = await audit.audit(store, heal=True)
    assert [(f.kind, f.host, f.healed) for f in found] == [("overcommit", name, False)]
    code, _, err = await hvmesh("manage", "audit", "--heal", *Cli(cloud).auth)
    assert code == 1 and "1 finding(s) left" in err


async def test_healing_a_leak_also_clears_the_overcommit_it_caused(cloud: Deployment) -> None:
    store = cloud.store
    assert store is not None
    name = (await store.hosts.values())[0].name

    def overfill(record: Host) -> Host:
        return msgspec.structs.replace(record, allocations={"x": {"MEMORY_MB": 10**9}})

    await store.hosts.mutate(name, overfill)
    found = {f.kind: f for f in await audit.audit(store, heal=True)}
    assert set(found) == {"overcommit", "leaked"}
    assert found["leaked"].healed and found["overcommit"].healed
    assert await audit.audit(store) == []
