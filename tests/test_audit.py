"""`hvmesh manage audit`: each kind of inconsistency is found, healed, and gone after."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import msgspec
import pytest

from hvmesh.agents.fake.driver import FakeDriver
from hvmesh.agents.runtime import AgentRuntime
from hvmesh.core.config import Config
from hvmesh.core.ops import audit
from hvmesh.core.protocol import states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Heartbeat, Host, Migration, Network, Port, Server
from hvmesh.core.state import ipam, placement, ports
from hvmesh.core.state.store import Store
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


# --- addresses and ports, stuck servers, guests and pins --------------------------------


def agent_of(dep: Deployment, host: str | None = None) -> AgentRuntime:
    for c in dep.components:
        if isinstance(c, AgentRuntime) and (host is None or c.host == host):
            return c
    raise AssertionError(f"no agent for {host}")


async def test_addresses_and_ports_found_and_healed(cloud: Deployment, admin: ApiClient) -> None:
    store = cloud.store
    assert store is not None
    await make_flavor_image(admin)
    net = (await admin("networks.create", {"name": "net", "cidr": "10.30.0.0/24"}))["network"]
    sid = (
        await admin(
            "servers.create",
            {"name": "vm", "flavor": "m1.small", "image": "cirros", "networks": ["net"]},
        )
    )["server"]["id"]
    await wait_server(store, sid, settled)
    # A port made for a server whose record is gone (its address held for it).
    orphan = (await admin("ports.create", {"network": "net"}))["port"]

    def bind_to_ghost(p: Port) -> Port:
        return msgspec.structs.replace(p, server_id="ghost", auto_delete=True, created_at=0.0)

    await store.ports.mutate(orphan["id"], bind_to_ghost)

    def leak(n: Network) -> Network:  # an address held for a port never written, long ago
        return msgspec.structs.replace(
            n,
            ips={**n.ips, "10.30.0.50": "never-written", "10.30.0.51": "being-written"},
            pending={"10.30.0.50": 0.0, "10.30.0.51": now()},  # .51: a live claim
        )

    await store.networks.mutate(net["id"], leak)

    def dangling(s: Server) -> Server:
        extra = msgspec.structs.replace(s.network_info[0], port_id="no-such-port", ip="10.9.9.9")
        return msgspec.structs.replace(s, network_info=[*s.network_info, extra])

    await store.servers.mutate(sid, dangling)

    cli = Cli(cloud)
    code, out, err = await hvmesh("manage", "audit", "-f", "json", *cli.auth)
    assert code == 1 and "3 finding(s) left" in err, err
    assert {(f["kind"], f["server_id"], f["resource"]) for f in json.loads(out)} == {
        ("address_leaked", "", f"network {net['id']} 10.30.0.50"),
        ("port_orphaned", "ghost", f"port {orphan['id']}"),
        ("port_missing", sid, "port no-such-port"),
    }

    healed = json.loads(await cli.ok("manage", "audit", "--heal", "-f", "json"))
    assert len(healed) == 3 and all(f["healed"] for f in healed)
    assert (await cli.ok("manage", "audit")).strip() == "audit: clean"
    network = (await store.networks.get(net["id"])).value
    assert "10.30.0.50" not in network.ips and orphan["ip"] not in network.ips
    assert network.ips["10.30.0.51"] == "being-written"  # the live claim is kept
    assert await store.ports.get(orphan["id"]) is None
    server = (await store.servers.get(sid)).value
    assert [v.port_id for v in server.network_info] == [server.network_info[0].port_id]
    assert (await store.ports.get(server.network_info[0].port_id)).value.server_id == sid


async def test_a_crash_between_address_and_port_is_reclaimed(
    cloud: Deployment, admin: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cloud.store
    assert store is not None
    await admin(
        "networks.create",
        {"name": "tiny", "cidr": "10.40.0.0/29", "allocation_start": "10.40.0.2"},
    )
    network = await find_network(store, "tiny")

    # A crash after the address is taken, before the port is written: the port write
    # dies, and so does its cleanup, as in a killed process.
    class Crash(BaseException):
        pass

    async def crash(*args: object) -> None:
        raise Crash

    async def crashing_create(network: Network, address: str) -> None:
        with monkeypatch.context() as m:
            m.setattr(store.ports, "create", crash)
            m.setattr(ports, "remove", crash)
            with pytest.raises(Crash):
                await ports.create(store, network, "admin", fixed_ip=address)

    await crashing_create(network, "10.40.0.3")
    left = await find_network(store, "tiny")
    assert "10.40.0.3" in left.ips and "10.40.0.3" in left.pending
    assert await audit.audit(store) == []  # still within the grace: maybe a live claim

    # Past the grace, the next allocation on the network takes it back.
    await store.networks.mutate(left.id, lambda n: _aged(n, "10.40.0.3"))
    port = await ports.create(store, left, "admin", fixed_ip="10.40.0.3")
    after = await find_network(store, "tiny")
    assert after.ips == {"10.40.0.3": port.id} and after.pending == {}

    # Another crash, left to the audit: found once past the grace, healed, then clean.
    await crashing_create(after, "10.40.0.4")
    await store.networks.mutate(after.id, lambda n: _aged(n, "10.40.0.4"))
    found = await audit.audit(store, heal=True)
    assert [(f.kind, f.resource, f.healed) for f in found] == [
        ("address_leaked", f"network {after.id} 10.40.0.4", True)
    ]
    assert await audit.audit(store) == []
    assert (await find_network(store, "tiny")).ips == {"10.40.0.3": port.id}


async def test_a_port_writer_stalled_past_the_grace_starts_again(
    cloud: Deployment, admin: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its address was reclaimed and given to another port meanwhile: it never shares it."""
    store = cloud.store
    assert store is not None
    await admin("networks.create", {"name": "n2", "cidr": "10.50.0.0/24"})
    network = await find_network(store, "n2")
    real_create = store.ports.create
    others: list[Port] = []

    async def stalled_create(key: str, value: Port) -> int:
        if not others:  # while this writer stalls, its claim ages and another port comes
            await store.networks.mutate(network.id, lambda n: _aged(n, value.ip))
            monkeypatch.setattr(store.ports, "create", real_create)
            others.append(await ports.create(store, network, "admin"))
            monkeypatch.setattr(store.ports, "create", stalled_create)
        return await real_create(key, value)

    monkeypatch.setattr(store.ports, "create", stalled_create)
    port = await ports.create(store, network, "admin")
    assert others and others[0].ip != port.ip
    final = await find_network(store, "n2")
    assert final.ips == {others[0].ip: others[0].id, port.ip: port.id} and final.pending == {}
    assert (await store.ports.get(port.id)).value.ip == port.ip
    assert await audit.audit(store) == []


def _aged(n: Network, address: str) -> Network:
    return msgspec.structs.replace(n, pending={**n.pending, address: now() - ipam.CLAIM_GRACE - 1})


async def find_network(store: Store, name: str) -> Network:
    return next(n for n in await store.networks.values() if n.name == name)


async def test_stuck_servers_found_and_ended(deployment: Deployment, admin: ApiClient) -> None:
    # The conductor's own check is off: here the audit finds and ends them.
    cloud = deployment
    await cloud.start_core(cloud.config(conductor={"stuck_check_interval": 0}), fake_hosts=3)
    store = cloud.store
    assert store is not None
    await make_flavor_image(admin, vcpus=1, ram=512, disk=1)
    building, rebooting = [await boot(cloud, admin, n) for n in ("building", "rebooting")]
    long_ago = now() - 10 * Config().conductor.scheduler_deadline

    def stall(vm_state: str, task_state: str) -> Callable[[Server], Server]:
        def change(s: Server) -> Server:
            return msgspec.structs.replace(
                s,
                vm_state=vm_state,
                task_state=task_state,
                request_id="req-gone",
                updated_at=long_ago,
            )

        return change

    await store.servers.mutate(building, stall("building", "spawning"))
    await store.servers.mutate(rebooting, stall("active", "rebooting"))
    # A resize accepted whose task never ran far: the source's allocation already held
    # by the move, no destination yet.
    resizing = await boot(cloud, admin, "resizing")
    before = (await store.servers.get(resizing)).value
    assert before.host is not None
    move = Migration(
        id="mig-stuck",
        kind="resize",
        source_host=before.host,
        old_flavor=before.flavor,
        new_flavor=msgspec.structs.replace(before.flavor, ram_mb=1024),
    )
    await store.servers.mutate(
        resizing,
        lambda s: msgspec.structs.replace(stall("active", "resize_prep")(s), migration=move),
    )
    await placement.move(store, before.host, resizing, move.id)
    fresh = await boot(cloud, admin, "fresh")  # moving, but not for long: left alone
    await store.servers.mutate(
        fresh, lambda s: msgspec.structs.replace(s, task_state="rebooting", updated_at=now())
    )

    cli = Cli(cloud)
    found = json.loads((await hvmesh("manage", "audit", "-f", "json", *cli.auth))[1])
    assert {(f["kind"], f["server_id"]) for f in found} == {
        ("stuck", building),
        ("stuck", rebooting),
        ("stuck", resizing),
    }
    out = await cli.ok("manage", "audit", "--heal")
    assert "healed 3 of 3 finding(s)" in out
    b = (await store.servers.get(building)).value
    assert (b.vm_state, b.task_state) == ("error", None)
    assert b.fault is not None and b.fault.message.startswith("stuck in spawning since ")
    assert b.fault.message.endswith("ended by audit")
    r = (await store.servers.get(rebooting)).value
    assert (r.vm_state, r.task_state, r.request_id) == ("active", None, None)
    assert r.fault is not None and "stuck in rebooting" in r.fault.message
    # The move that never left its source is no move: the server rests where it was,
    # holding its allocation again, with its flavor; the move's record is ended.
    z = (await store.servers.get(resizing)).value
    assert (z.vm_state, z.task_state, z.migration, z.host) == ("active", None, None, before.host)
    assert z.flavor == before.flavor
    allocations = (await store.hosts.get(before.host)).value.allocations
    assert resizing in allocations and move.id not in allocations
    record = await store.migrations.get(move.id)
    assert record is not None and record.value.status != "pre-migrating"
    await store.servers.mutate(fresh, lambda s: msgspec.structs.replace(s, task_state=None))
    assert await audit.audit(store) == []


async def test_orphan_guests_and_pins_found_and_removed(
    cloud: Deployment, admin: ApiClient
) -> None:
    store = cloud.store
    assert store is not None
    await make_flavor_image(admin, vcpus=1, ram=512, disk=1)
    sid = await boot(cloud, admin, "kept")
    server = (await store.servers.get(sid)).value
    agent = agent_of(cloud, server.host)
    other = next(
        c for c in cloud.components if isinstance(c, AgentRuntime) and c.host != server.host
    )
    assert isinstance(agent.driver, FakeDriver) and isinstance(other.driver, FakeDriver)
    assert agent.images is not None and other.images is not None
    agent.driver.instances["no-server"] = states.RUNNING  # its server never existed
    other.driver.instances[sid] = states.RUNNING  # a copy on a host the server is not on
    other.images.pin("deleted-server", {"c" * 64})

    cli = Cli(cloud)
    code, out, err = await hvmesh("manage", "audit", "-f", "json", *cli.auth)
    assert code == 1, err
    assert {(f["kind"], f["host"], f["server_id"]) for f in json.loads(out)} == {
        ("orphan_guest", agent.host, "no-server"),
        ("orphan_guest", other.host, sid),
        ("pin_orphaned", other.host, "deleted-server"),
    }
    healed = json.loads(await cli.ok("manage", "audit", "--heal", "-f", "json"))
    assert len(healed) == 3 and all(f["healed"] for f in healed)
    assert "no-server" not in agent.driver.instances and sid in agent.driver.instances
    assert sid not in other.driver.instances
    assert other.images.pinned_servers() == []
    assert (await cli.ok("manage", "audit")).strip() == "audit: clean"


async def test_an_agent_that_does_not_answer_is_reported(cloud: Deployment) -> None:
    store = cloud.store
    assert store is not None
    await store.heartbeats.put("silent", Heartbeat(host="silent", at=now(), agent_id="x"))
    cli = Cli(cloud)
    code, out, err = await hvmesh("manage", "audit", "--heal", "-f", "json", *cli.auth)
    assert code == 1 and "1 finding(s) left" in err
    [f] = json.loads(out)
    assert (f["kind"], f["host"], f["healed"]) == ("host_unreachable", "silent", False)
    assert "hvmesh.agent.silent.list_instances" in f["message"]


async def test_pins_cover_kernel_and_ramdisk(cloud: Deployment, admin: ApiClient) -> None:
    store = cloud.store
    assert store is not None
    kernel, k_sum = await uploaded(admin, "k", b"kernel" * 100)
    ramdisk, r_sum = await uploaded(admin, "r", b"initrd" * 100)
    props = {"kernel_id": kernel, "ramdisk_id": ramdisk}
    _, root_sum = await uploaded(admin, "root", b"root" * 100, props)
    await admin("flavors.create", {"name": "m1.small", "vcpus": 1, "ram_mb": 256, "disk_gb": 1})
    sid = (await admin("servers.create", {"name": "vm", "flavor": "m1.small", "image": "root"}))[
        "server"
    ]["id"]
    server = await wait_server(store, sid, settled)
    images = agent_of(cloud, server.host).images
    assert images is not None
    assert images.pinned == {k_sum, r_sum, root_sum}
    assert images.pinned_servers() == [sid]


async def uploaded(
    admin: ApiClient, name: str, data: bytes, properties: dict[str, str] | None = None
) -> tuple[str, str]:
    """An image with its bytes uploaded: its id and sha256."""
    body = {"name": name, "upload": True, "properties": properties or {}}
    image = (await admin("images.create", body))["image"]
    headers = {"Hvmesh-Image": image["id"], "Hvmesh-Offset": "0"}
    await admin("images.upload", data, headers=headers)
    sha = hashlib.sha256(data).hexdigest()
    await admin("images.upload_finish", {"id": image["id"], "size": len(data), "sha256": sha})
    return image["id"], sha
