"""The driver conformance suite: every compute driver keeps agents/driver.py's contract
against its real peer.

Each test runs once per driver of tests/drivers/peers.py PEERS (the fake driver in this
process, libvirt on the system libvirtd and QEMU, ...). The tests call the driver's
methods as the agent runtime does and check the outcome through the driver's own reads
(get_info, list_instances, get_inventory); each driver's own tests check its peer
directly. Where the runtime is part of the contract (the host record's traits, the
refusal of actions a host cannot do, reconcile at start), the runtime's own code runs
against a real nats-server.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from hvmesh.agents.driver import ComputeDriver, DriverError, NodeInventory
from hvmesh.agents.fake.driver import FakeDriver
from hvmesh.agents.runtime import AgentRuntime
from hvmesh.agents.snapshots import Snapshots
from hvmesh.core.protocol import errors, states
from hvmesh.core.protocol.actions import (
    ACTION_CAPABILITIES,
    CAPABILITY_TRAITS,
    capability_trait,
    check_capable,
)
from hvmesh.core.protocol.messages import Work
from hvmesh.core.protocol.records import Host, Image, Server, Vif
from hvmesh.core.state import image_data
from hvmesh.core.state.store import Store
from tests.drivers.peers import PEERS, Peer, PeerUnavailable, fake_config, ready
from tests.support import Deployment

NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # resource classes and traits, os-traits style
MISSING = "00000000-0000-4000-8000-000000000000"  # a server id no test ever spawns


@pytest.fixture(params=sorted(PEERS))
async def peer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Peer]:
    """A ready driver of each registered kind on its real peer."""
    name: str = request.param
    async with contextlib.AsyncExitStack() as stack:
        try:
            opened = await stack.enter_async_context(PEERS[name](tmp_path))
        except PeerUnavailable as exc:
            pytest.skip(f"{name}: {exc}")
        yield opened


async def power(driver: ComputeDriver, server_id: str) -> int:
    return (await driver.get_info(server_id)).power_state


def named(state: int) -> str:
    return states.POWER_STATE_NAMES.get(state, str(state))


async def assert_power(driver: ComputeDriver, server_id: str, want: int, after: str) -> None:
    got = await power(driver, server_id)
    assert got == want, f"{driver.name}: after {after}, {named(got)} and not {named(want)}"


async def spawned(peer: Peer, name: str = "conformance") -> Server:
    s = peer.server(name)
    await peer.driver.spawn(s, peer.image)
    return s


async def host_record(driver: ComputeDriver, dep: Deployment) -> Host:
    """The host record the agent runtime writes for this driver (its register step)."""
    store = store_of(dep)
    runtime = AgentRuntime(dep.nc, driver.config, driver)
    runtime.store = store
    await runtime.register()
    entry = await store.hosts.get(driver.host)
    assert entry is not None
    return entry.value


def store_of(dep: Deployment) -> Store:
    assert dep.store is not None
    return dep.store


# --- the host -------------------------------------------------------------------------------


async def test_inventory_shape(peer: Peer) -> None:
    inv = await peer.driver.get_inventory()
    assert isinstance(inv, NodeInventory)
    if peer.one_per_host and inv.resources:  # a bare-metal node, as Nova's: one unit of
        assert (inv.vcpus, inv.memory_mb, inv.local_gb) == (0, 0, 0), inv  # its class only
    else:
        assert inv.vcpus > 0 and inv.memory_mb > 0 and inv.local_gb > 0, inv
    assert inv.hypervisor_type.strip() and inv.hypervisor_version.strip(), inv
    assert re.fullmatch(r"[a-z0-9_]+", inv.cpu_arch), inv.cpu_arch
    for rc, amount in inv.resources.items():
        assert NAME.match(rc) and rc.startswith("CUSTOM_") and amount > 0, (rc, amount)
    for trait in inv.traits:
        assert NAME.match(trait), trait
    # The hypervisor's own traits never claim a capability the driver does not declare.
    undeclared = {capability_trait(c) for c in CAPABILITY_TRAITS if not peer.capable(c)}
    assert not undeclared & set(inv.traits), (
        f"{peer.name} reports {sorted(undeclared & set(inv.traits))} without declaring "
        "the capability"
    )
    again = await peer.driver.get_inventory()
    assert (again.vcpus, again.memory_mb, again.cpu_arch) == (
        inv.vcpus,
        inv.memory_mb,
        inv.cpu_arch,
    )


# --- spawn, destroy, rebuild ----------------------------------------------------------------


async def test_spawn_and_destroy_are_idempotent(peer: Peer) -> None:
    d = peer.driver
    s = await spawned(peer)
    assert s.id in await d.list_instances()
    await assert_power(d, s.id, states.RUNNING, "spawn")

    await d.spawn(s, peer.image)  # delivered again: the instance is already there
    assert (await d.list_instances()).count(s.id) == 1
    await assert_power(d, s.id, states.RUNNING, "a second spawn")

    with contextlib.suppress(NotImplementedError):  # a driver may keep no console log
        assert isinstance(await d.get_console_output(s.id), str)

    await d.destroy(s.id)
    assert s.id not in await d.list_instances()
    with pytest.raises(DriverError):
        await d.get_info(s.id)
    await d.destroy(s.id)  # already gone: no error
    await d.destroy(MISSING)  # never made: no error
    assert s.id not in await d.list_instances()


async def test_an_instance_that_is_not_here_is_a_driver_error(peer: Peer) -> None:
    d = peer.driver
    s = peer.server()  # never spawned
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get_info": lambda: d.get_info(s.id),
        "power_off": lambda: d.power_off(s.id),
        "power_on": lambda: d.power_on(s),
        "reboot SOFT": lambda: d.reboot(s, "SOFT"),
        "reboot HARD": lambda: d.reboot(s, "HARD"),
        "pause": lambda: d.pause(s.id),
        "unpause": lambda: d.unpause(s.id),
        "suspend": lambda: d.suspend(s.id),
        "resume": lambda: d.resume(s),
    }
    for what, call in calls.items():
        try:
            await call()
        except DriverError:
            continue
        except NotImplementedError:
            assert what in ("pause", "unpause", "suspend", "resume"), what
            continue
        pytest.fail(f"{peer.name}: {what} of an instance that is not here raised nothing")
    with contextlib.suppress(NotImplementedError), pytest.raises(DriverError):
        await d.get_console_output(s.id)
    assert s.id not in await d.list_instances()


async def test_rebuild_recreates_and_evacuation_creates(peer: Peer) -> None:
    d = peer.driver
    s = await spawned(peer)
    await d.rebuild(s, peer.image)
    assert (await d.list_instances()).count(s.id) == 1
    await assert_power(d, s.id, states.RUNNING, "rebuild")
    # An evacuation's destination: no instance here yet (on a host of its own when a
    # host holds one instance).
    there = peer.dest if peer.one_per_host and peer.dest is not None else d
    t = peer.server("evacuated")
    await there.rebuild(t, peer.image)
    assert t.id in await there.list_instances()
    await assert_power(there, t.id, states.RUNNING, "rebuild where there was no instance")


async def test_snapshot(peer: Peer, deployment: Deployment, tmp_path: Path) -> None:
    """A driver declaring supports_snapshot writes the disk, and the runtime's two steps
    put non-empty, checked bytes in the image store; any other raises NotImplementedError."""
    d = peer.driver
    s = await spawned(peer)
    if not peer.capable("supports_snapshot"):
        with pytest.raises(NotImplementedError):
            await d.snapshot(s, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
        return
    store = store_of(deployment)
    image = Image(id=str(uuid.uuid4()), name="snap", disk_format="", status="queued")
    await store.images.create(image.id, image)
    staging = Snapshots(deployment.nc.jetstream(), store, tmp_path / "staging")
    work = Work(
        kind="snapshot", server_id=s.id, host=d.host, server=s, params={"image_id": image.id}
    )
    taken = await staging.take(d, work)
    assert taken["disk_format"] in ("qcow2", "raw", "vmdk", "vhd", "vhdx"), taken
    assert int(taken["size"]) > 0
    await assert_power(d, s.id, states.RUNNING, "snapshot")
    uploaded = await staging.upload(msgspec.structs.replace(work, kind="upload_snapshot"))
    out = io.BytesIO()
    await image_data.download(deployment.nc.jetstream(), image.id, uploaded["sha256"], out)
    assert len(out.getvalue()) == int(uploaded["size"]) == int(taken["size"]) > 0
    assert hashlib.sha256(out.getvalue()).hexdigest() == uploaded["sha256"]
    assert not any((tmp_path / "staging").iterdir()), "the staged copy stays behind"


# --- power ------------------------------------------------------------------------------------


async def optional(call: Awaitable[None]) -> bool:
    """Run a power call that a driver may not have at all; False if it has not."""
    try:
        await call
    except NotImplementedError:
        return False
    return True


async def test_power_transitions(peer: Peer) -> None:
    d = peer.driver
    s = await spawned(peer)
    await d.power_off(s.id)
    await assert_power(d, s.id, states.SHUTDOWN, "power_off")
    await d.power_off(s.id)  # already off: no error
    await assert_power(d, s.id, states.SHUTDOWN, "a second power_off")
    await d.power_on(s)
    await assert_power(d, s.id, states.RUNNING, "power_on")
    await d.reboot(s, "SOFT")
    await assert_power(d, s.id, states.RUNNING, "a SOFT reboot")
    await d.reboot(s, "HARD")
    await assert_power(d, s.id, states.RUNNING, "a HARD reboot")

    if await optional(d.pause(s.id)):
        await assert_power(d, s.id, states.POWER_PAUSED, "pause")
        await d.unpause(s.id)
        await assert_power(d, s.id, states.RUNNING, "unpause")
        await d.pause(s.id)
        await d.reboot(s, "HARD")  # a HARD reboot works from every state
        await assert_power(d, s.id, states.RUNNING, "a HARD reboot of a paused instance")
    if await optional(d.suspend(s.id)):
        await assert_power(d, s.id, states.POWER_SUSPENDED, "suspend")
        await d.resume(s)
        await assert_power(d, s.id, states.RUNNING, "resume")
        await d.suspend(s.id)
        await d.reboot(s, "HARD")
        await assert_power(d, s.id, states.RUNNING, "a HARD reboot of a suspended instance")
    await d.power_off(s.id)
    await d.reboot(s, "HARD")
    await assert_power(d, s.id, states.RUNNING, "a HARD reboot of an instance that was off")


async def test_invalid_transitions_are_refused(peer: Peer) -> None:
    """An instance that is off cannot be paused, suspended or unpaused: DriverError
    naming the instance, and it stays off. Resuming or unpausing a running instance
    leaves it running (refused or not)."""
    d = peer.driver
    s = await spawned(peer)
    await d.power_off(s.id)
    refusals = {
        "pause": lambda: d.pause(s.id),
        "suspend": lambda: d.suspend(s.id),
        "unpause": lambda: d.unpause(s.id),
    }
    for what, call in refusals.items():
        try:
            await call()
        except NotImplementedError:
            continue  # the driver cannot do it at all
        except DriverError as exc:
            assert s.id in str(exc), f"{peer.name}: {what} refused without naming it: {exc}"
        else:
            got = named(await power(d, s.id))
            pytest.fail(f"{peer.name}: {what} of an instance that is off was accepted ({got})")
        await assert_power(d, s.id, states.SHUTDOWN, f"a refused {what}")

    await d.power_on(s)
    for what, call in {"unpause": lambda: d.unpause(s.id), "resume": lambda: d.resume(s)}.items():
        with contextlib.suppress(DriverError, NotImplementedError):
            await call()
        await assert_power(d, s.id, states.RUNNING, f"{what} of a running instance")


# --- resize and cold migration ------------------------------------------------------------


async def test_resize_and_cold_migration(peer: Peer) -> None:
    if not peer.capable("supports_resize"):  # checked with the capabilities, below
        return
    if peer.capable("supports_migrate_to_same_host"):
        await resize_in_place(peer)
    elif peer.dest is not None:
        await migrate_between_hosts(peer, peer.dest)
    else:
        pytest.fail(
            f"{peer.name} resizes only to another host and its peer has one host: "
            "give its factory in tests/drivers/peers.py a `dest` driver"
        )


async def resize_in_place(peer: Peer) -> None:
    d = peer.driver
    s = await spawned(peer)
    resized = msgspec.structs.replace(s, flavor=peer.bigger)
    # Reverted: the instance comes back, running.
    await d.migrate_disk_and_power_off(s, peer.host, peer.bigger)
    assert s.id in await d.list_instances()
    await assert_power(d, s.id, states.SHUTDOWN, "migrate_disk_and_power_off")
    await d.finish_migration(resized, peer.image, power_on=True)
    await assert_power(d, s.id, states.RUNNING, "finish_migration(power_on=True)")
    await d.finish_revert_migration(s, power_on=True)
    assert (await d.list_instances()).count(s.id) == 1
    await assert_power(d, s.id, states.RUNNING, "finish_revert_migration(power_on=True)")
    # Confirmed: the resized instance stays, off as it was asked to be.
    await d.migrate_disk_and_power_off(s, peer.host, peer.bigger)
    await d.finish_migration(resized, peer.image, power_on=False)
    await assert_power(d, s.id, states.SHUTDOWN, "finish_migration(power_on=False)")
    await d.confirm_migration(s.id)
    assert (await d.list_instances()).count(s.id) == 1
    await assert_power(d, s.id, states.SHUTDOWN, "confirm_migration")


async def migrate_between_hosts(peer: Peer, dest: ComputeDriver) -> None:
    src = peer.driver
    s = await spawned(peer)
    resized = msgspec.structs.replace(s, flavor=peer.bigger, host=dest.host)
    # Confirmed: the instance runs on the destination and nothing is left here.
    await src.migrate_disk_and_power_off(s, dest.host, peer.bigger)
    assert s.id in await src.list_instances()
    await assert_power(src, s.id, states.SHUTDOWN, "migrate_disk_and_power_off")
    await dest.finish_migration(resized, peer.image, power_on=True)
    await assert_power(dest, s.id, states.RUNNING, "finish_migration(power_on=True)")
    await src.confirm_migration(s.id)
    await src.confirm_migration(s.id)  # already gone: no error
    assert s.id not in await src.list_instances()
    await assert_power(dest, s.id, states.RUNNING, "confirm_migration at the source")
    # Reverted: the destination's copy is destroyed, the source's comes back.
    t = await spawned(peer, "reverted")
    await src.migrate_disk_and_power_off(t, dest.host, peer.bigger)
    await dest.finish_migration(
        msgspec.structs.replace(t, flavor=peer.bigger, host=dest.host), peer.image, power_on=False
    )
    await assert_power(dest, t.id, states.SHUTDOWN, "finish_migration(power_on=False)")
    await dest.destroy(t.id)
    await src.finish_revert_migration(t, power_on=True)
    assert t.id not in await dest.list_instances()
    await assert_power(src, t.id, states.RUNNING, "finish_revert_migration(power_on=True)")


# --- reconcile on restart ---------------------------------------------------------------------


async def test_reconcile_after_restart(peer: Peer, deployment: Deployment) -> None:
    """After an agent restart, the runtime's reconcile removes the instances no server
    places on this host and keeps the ones that are this host's."""
    store = store_of(deployment)
    if peer.one_per_host:
        await reconcile_one_per_host(peer, deployment)
        return
    kept = await spawned(peer, "kept")
    orphan = await spawned(peer, "orphan")
    elsewhere = await spawned(peer, "elsewhere")
    await store.servers.create(kept.id, kept)
    await store.servers.create(elsewhere.id, msgspec.structs.replace(elsewhere, host="other"))

    d = await peer.restart()
    listed = await d.list_instances()
    assert {kept.id, orphan.id, elsewhere.id} <= set(listed), "instances lost in a restart"
    # A peer shared with others (one libvirtd for the machine) may run their instances:
    # this test's store places them here, so reconcile leaves them alone.
    for other in set(listed) - set(peer.made):
        await store.servers.put(other, msgspec.structs.replace(kept, id=other, name="foreign"))

    runtime = AgentRuntime(deployment.nc, d.config, d)
    runtime.store = store
    await runtime.reconcile()
    after = await d.list_instances()
    assert kept.id in after
    assert orphan.id not in after and elsewhere.id not in after, after
    await assert_power(d, kept.id, states.RUNNING, "reconcile")
    with pytest.raises(DriverError):
        await d.get_info(orphan.id)


async def reconcile_one_per_host(peer: Peer, deployment: Deployment) -> None:
    """Where a host holds one instance: it survives a restart and is kept while a server
    places it here; once none does (placed elsewhere), reconcile removes it."""
    store = store_of(deployment)
    s = await spawned(peer, "kept")
    await store.servers.create(s.id, s)
    for placed_here in (True, False):
        if not placed_here:
            await store.servers.put(s.id, msgspec.structs.replace(s, host="other"))
        d = await peer.restart()
        assert s.id in await d.list_instances(), "the instance was lost in a restart"
        runtime = AgentRuntime(deployment.nc, d.config, d)
        runtime.store = store
        await runtime.reconcile()
        if placed_here:
            await assert_power(d, s.id, states.RUNNING, "reconcile")
        else:
            assert s.id not in await d.list_instances()


# --- capabilities -------------------------------------------------------------------------


def vif() -> Vif:
    return Vif(
        port_id="port-conformance",
        network_id="net",
        network_name="net",
        mac="fa:16:3e:00:00:99",
        ip="10.0.0.99",
        cidr="10.0.0.0/24",
        physical_network="physnet1",
    )


#: The calls that do what a capability stands for: a driver that lacks the capability
#: raises NotImplementedError from each.
CAPABILITY_CALLS: dict[str, Callable[[ComputeDriver, Server], list[Awaitable[None]]]] = {
    "supports_live_migration": lambda d, s: [
        d.pre_live_migration(s),
        d.live_migration(s, "elsewhere"),
    ],
    "supports_attach_interface": lambda d, s: [
        d.attach_interface(s, vif()),
        d.detach_interface(s, vif()),
    ],
    "supports_pause": lambda d, s: [d.pause(s.id), d.unpause(s.id)],
    "supports_suspend": lambda d, s: [d.suspend(s.id)],
    "supports_resize": lambda d, s: [d.migrate_disk_and_power_off(s, "elsewhere", s.flavor)],
}


def assert_refusals(host: Host, declared: set[str]) -> None:
    """check_capable (what the API runs first) lets an action through exactly when the
    host's driver declares the capability it needs, and else answers 409 naming both."""
    for action, capability in ACTION_CAPABILITIES.items():
        if capability in declared:
            check_capable(action, host)
            continue
        with pytest.raises(errors.Conflict) as refused:
            check_capable(action, host)
        assert refused.value.code == 409
        assert capability in str(refused.value) and action in str(refused.value), refused.value


async def test_capabilities_are_declared_and_enforced(peer: Peer, deployment: Deployment) -> None:
    d = peer.driver
    declared = {c for c, on in type(d).capabilities.items() if on}
    host = await host_record(d, deployment)
    assert host.driver == d.name
    for capability in set(CAPABILITY_TRAITS) | set(type(d).capabilities):
        trait = capability_trait(capability)
        if capability in declared:
            assert trait in host.traits, f"{peer.name} declares {capability}: {trait} missing"
        else:
            assert trait not in host.traits, f"{peer.name} lacks {capability}, has {trait}"
    assert_refusals(host, declared)

    lacking = [c for c in CAPABILITY_CALLS if c not in declared]
    if not lacking:
        return
    s = await spawned(peer)
    for capability in lacking:
        for call in CAPABILITY_CALLS[capability](d, s):
            with pytest.raises(NotImplementedError):
                await call
    await assert_power(d, s.id, states.RUNNING, "the calls it cannot do")


@pytest.mark.parametrize("capability", sorted(set(ACTION_CAPABILITIES.values())))
async def test_a_host_lacking_a_capability_is_refused_its_actions(
    capability: str, deployment: Deployment
) -> None:
    """The fake driver declaring one capability False: its host record lacks the trait,
    and only the actions needing that capability are refused."""
    lacking = FakeDriver.lacking(capability)
    driver = await ready(lacking("fake-lacking", fake_config()))
    host = await host_record(driver, deployment)
    assert host.driver == lacking.name
    assert capability_trait(capability) not in host.traits
    declared = {c for c, on in lacking.capabilities.items() if on}
    assert capability not in declared
    assert_refusals(host, declared)
    await driver.cleanup_host()
