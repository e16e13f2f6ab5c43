"""Driver capabilities as host traits: reported by agents, enforced by the API, used by the TraitsFilter."""

from __future__ import annotations

from typing import Any

import pytest

from hvmesh.agents.fake.driver import FakeDriver
from hvmesh.agents.runtime import AgentRuntime
from hvmesh.core.bus import connection
from hvmesh.core.ops.launcher import make_agent
from hvmesh.core.protocol import actions, errors
from hvmesh.core.protocol.records import Host, Server
from hvmesh.core.state import action_log
from hvmesh.plugins import hookimpl, manager
from tests.support import ApiClient, Deployment, act, boot, idle, make_flavor_image, wait_server

LIMITED = FakeDriver.lacking(
    "supports_live_migration",
    "supports_attach_interface",
    "supports_evacuate",
    name="fake-limited",
)


class LimitedDriverPlugin:
    """Registers the fake driver without live migration, interface hot-plug and evacuate."""

    @hookimpl
    def hvmesh_register_drivers(self, register: Any) -> None:
        register(LIMITED.name, LIMITED, description="fake hosts lacking some capabilities")


async def _quiet(exc: Exception) -> None:
    """Connection errors during teardown are expected."""


async def start_host(dep: Deployment, host: str, driver: str) -> AgentRuntime:
    """An agent for `host` with the registered driver `driver` (the test plugin loaded)."""
    cfg = dep.config()
    registry = manager.load(extra=[LimitedDriverPlugin()], strict=True)
    nc = await connection.connect(cfg.nats, f"test-agent-{host}", error_cb=_quiet)
    dep.connections.append(nc)
    agent = make_agent(nc, cfg, driver, host, registry)
    await dep.start(agent)
    return agent


async def host_record(dep: Deployment, name: str) -> Host:
    assert dep.store is not None
    entry = await dep.store.hosts.get(name)
    assert entry is not None
    return entry.value


async def trait_flavors(admin: ApiClient) -> None:
    """Flavors m1.required and m1.forbidden: trait:COMPUTE_NET_ATTACH_INTERFACE as named."""
    for want in ("required", "forbidden"):
        await admin(
            "flavors.create",
            {
                "name": f"m1.{want}",
                "vcpus": 1,
                "ram_mb": 512,
                "disk_gb": 1,
                "extra_specs": {"trait:COMPUTE_NET_ATTACH_INTERFACE": want},
            },
        )


async def boot_with_trait(dep: Deployment, admin: ApiClient, name: str, want: str) -> Server:
    """Boot a server whose flavor wants COMPUTE_NET_ATTACH_INTERFACE `want`."""
    return await boot(dep, admin, name, flavor=f"m1.{want}", networks=["net-a"])


def test_capability_traits() -> None:
    assert actions.capability_trait("supports_attach_interface") == "COMPUTE_NET_ATTACH_INTERFACE"
    assert actions.capability_trait("supports_live_migration") == (
        "CUSTOM_HVMESH_SUPPORTS_LIVE_MIGRATION"
    )
    assert actions.capability_trait("supports_foo-bar") == "CUSTOM_HVMESH_SUPPORTS_FOO_BAR"
    # Every capability an action needs has its trait, and the fake driver declares each.
    for capability in actions.ACTION_CAPABILITIES.values():
        assert capability in actions.CAPABILITY_TRAITS
        assert FakeDriver.capabilities[capability] is True
    assert "COMPUTE_SAME_HOST_COLD_MIGRATE" not in FakeDriver.capability_traits()
    assert LIMITED.name == "fake-limited" and FakeDriver.name == "fake"
    assert FakeDriver.capability_traits() - LIMITED.capability_traits() == {
        "COMPUTE_NET_ATTACH_INTERFACE",
        "CUSTOM_HVMESH_SUPPORTS_EVACUATE",
        "CUSTOM_HVMESH_SUPPORTS_LIVE_MIGRATION",
    }
    with pytest.raises(ValueError, match="no capability"):
        FakeDriver.lacking("supports_teleport")


async def test_hosts_carry_capability_traits(deployment: Deployment) -> None:
    await deployment.start_core()
    await deployment.start_agent("full", deployment.config(fake={"traits": ["HW_CPU_X86_AVX2"]}))
    await start_host(deployment, "lim", LIMITED.name)
    full = await host_record(deployment, "full")
    assert full.driver == "fake"
    assert set(full.traits) == FakeDriver.capability_traits() | {"HW_CPU_X86_AVX2"}
    assert {
        "COMPUTE_NET_ATTACH_INTERFACE",
        "COMPUTE_IMAGE_TYPE_QCOW2",
        "CUSTOM_HVMESH_SUPPORTS_LIVE_MIGRATION",
        "CUSTOM_HVMESH_SUPPORTS_EVACUATE",
    } <= set(full.traits)
    assert "COMPUTE_VOLUME_MULTI_ATTACH" not in full.traits
    lim = await host_record(deployment, "lim")
    assert lim.driver == "fake-limited"
    assert set(lim.traits) == LIMITED.capability_traits()
    assert "COMPUTE_NET_ATTACH_INTERFACE" not in lim.traits
    assert "COMPUTE_IMAGE_TYPE_QCOW2" in lim.traits


async def test_actions_a_driver_lacks_are_refused_and_traits_place_servers(
    deployment: Deployment,
) -> None:
    dep = deployment
    await dep.start_core()
    await start_host(dep, "lim", LIMITED.name)
    await dep.start_agent("full")
    admin = ApiClient(await dep.connect("admin"))
    await make_flavor_image(admin)
    await admin("networks.create", {"name": "net-a", "cidr": "10.10.0.0/24", "shared": True})
    await admin("networks.create", {"name": "net-b", "cidr": "10.20.0.0/24", "shared": True})
    await trait_flavors(admin)

    # The TraitsFilter selects hosts by a capability trait.
    capable = await boot_with_trait(dep, admin, "capable", "required")
    plain = await boot_with_trait(dep, admin, "plain", "forbidden")
    assert capable.host == "full" and plain.host == "lim"
    for i in range(3):
        assert (await boot_with_trait(dep, admin, f"more{i}", "required")).host == "full"

    assert dep.store is not None
    before = await dep.store.servers.get(plain.id)
    log_before = await action_log.for_server(dep.store, plain.id)
    ports_before = (await admin("ports.list"))["ports"]
    port = plain.network_info[0].port_id
    refusals: list[tuple[str, dict[str, Any]]] = [
        ("live-migrate", {}),
        ("live-migrate", {"host": "full"}),
        ("evacuate", {}),
        ("attach-interface", {"network": "net-b"}),
        ("detach-interface", {"port": port}),
    ]
    for action, body in refusals:
        capability = actions.ACTION_CAPABILITIES[action]
        with pytest.raises(errors.Conflict) as refused:
            await act(admin, plain.id, action, **body)
        assert refused.value.message == (
            f"host lim (driver fake-limited) cannot {action}: it lacks the capability {capability}"
        )
        assert refused.value.code == 409
    # Nothing was written: the server record, its action log and the ports are as before.
    after = await dep.store.servers.get(plain.id)
    assert before is not None and after is not None
    assert after.revision == before.revision and after.value == before.value
    assert await action_log.for_server(dep.store, plain.id) == log_before
    assert (await admin("ports.list"))["ports"] == ports_before

    # A move that names a host whose driver lacks the capability is refused the same way.
    with pytest.raises(errors.Conflict, match=r"host lim \(driver fake-limited\) cannot"):
        await act(admin, capable.id, "live-migrate", host="lim")
    # What the limited driver can do still runs there.
    reply = await act(admin, plain.id, "stop")
    assert reply["server"]["task_state"] == "powering-off"


async def test_a_scheduled_move_goes_only_to_a_host_whose_driver_can_do_it(
    deployment: Deployment,
) -> None:
    dep = deployment
    await dep.start_core()
    await dep.start_agent("full")
    admin = ApiClient(await dep.connect("admin"))
    await make_flavor_image(admin)
    server = await boot(dep, admin, "vm1")
    assert server.host == "full"
    # The only other host's driver cannot live-migrate: no valid host, the server stays.
    await start_host(dep, "lim", LIMITED.name)
    assert dep.store is not None
    # The scheduler knows "lim": a server kept off "full" lands there.
    probe = await boot(dep, admin, "probe", scheduler_hints={"different_host": [server.id]})
    assert probe.host == "lim"
    await act(admin, server.id, "live-migrate")
    stayed = await wait_server(dep.store, server.id, idle)
    assert stayed is not None and (stayed.host, stayed.vm_state) == ("full", "active")
    assert stayed.fault is not None and "No valid host" in stayed.fault.message, stayed.fault
    # A second capable host is where the same move goes.
    await dep.start_agent("full2")
    await act(admin, server.id, "live-migrate")
    moved = await wait_server(
        dep.store, server.id, lambda s: s is not None and s.host == "full2" and idle(s)
    )
    assert moved is not None and moved.vm_state == "active"
