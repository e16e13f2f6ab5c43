"""Scheduler and plugin faults end cleanly; builds wait for schedulers up to a deadline.

The faulty plugin is a real installed distribution (a dist-info directory on PYTHONPATH,
as tests/test_plugins.py installs its broken ones), loaded by real `hvmesh scheduler`
processes. Its filter and weigher raise KeyError when a flavor's extra spec
`faulty:raise` asks them to, so one deployment serves requests that fail and requests
that do not. Schedulers that are "away" are real processes stopped with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hvmesh.core import config
from hvmesh.core.api.service import ApiService
from hvmesh.core.conductor.service import Conductor
from hvmesh.core.ops.launcher import fake_fleet
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.protocol.records import Flavor, Heartbeat, Host, Inventory
from hvmesh.core.state.inventory import Index
from hvmesh.core.state.store import Entry
from hvmesh.plugins import manager
from hvmesh.plugins.api import Filter, Weigher
from hvmesh.schedulers.faults import PluginRaised
from hvmesh.schedulers.filter_scheduler import FilterScheduler
from tests.support import (
    ApiClient,
    Deployment,
    act,
    boot,
    idle,
    make_flavor_image,
    settled,
    stopped,
    wait_all,
    wait_for_services,
    wait_server,
)
from tests.test_plugins import install_plugins

DIST = "hvmesh-faulty-plugins"
MODULE = "hvmesh_faulty"
FAULTY = """
import numpy as np

from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import Filter, Weigher


def _mode(spec):
    return spec.flavor.extra_specs.get("faulty:raise", "")


def _mask(cols, spec):
    mode = _mode(spec)
    if mode == "filter" or (mode == "move" and spec.ignore_hosts):
        raise KeyError("oops")
    return None


def _weigh(cols, spec):
    if _mode(spec) == "weigher":
        raise KeyError("oops")
    return np.zeros(len(cols["name"]))


@hookimpl
def hvmesh_register_filters(register):
    register(Filter(name="FaultyFilter", mask=_mask, row_local=True))


@hookimpl
def hvmesh_register_weighers(register):
    register(Weigher(name="FaultyWeigher", weigh=_weigh, row_local=True))
"""
ORIGIN = f"plugin {DIST}, entry point {MODULE} = {MODULE}"
FILTER_FAULT = f"filter FaultyFilter ({ORIGIN}) raised KeyError: 'oops'"
WEIGHER_FAULT = f"weigher FaultyWeigher ({ORIGIN}) raised KeyError: 'oops'"


@pytest.fixture
def faulty_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The faulty plugin installed, for this process and the processes it starts."""
    root = install_plugins(tmp_path / "site", {MODULE: FAULTY}, dist=DIST)
    monkeypatch.syspath_prepend(str(root))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{root}{os.pathsep}{old}" if old else str(root))
    return root


def with_faulty_plugins(cfg: config.Config) -> dict[str, Any]:
    s = cfg.scheduler
    return {
        "enabled_filters": [*s.enabled_filters, "FaultyFilter"],
        "weighers": [*s.weighers, "FaultyWeigher"],
    }


async def start_without_scheduler(dep: Deployment, cfg: config.Config, hosts: int = 3) -> None:
    """API, conductor and fake hosts in this process; schedulers are separate processes."""
    nc = await dep.service_connection()
    dep.connections.append(nc)
    await dep.start(ApiService(nc, cfg), Conductor(nc, cfg), *fake_fleet(nc, cfg, hosts))


async def create(admin: ApiClient, flavor: str, **extra: Any) -> list[str]:
    reply = await admin(
        "servers.create", {"name": "vm", "flavor": flavor, "image": "cirros", **extra}
    )
    return [s["id"] for s in reply.get("servers", [reply["server"]])]


async def allocations_of(dep: Deployment, server_id: str) -> dict[str, Any]:
    assert dep.store is not None
    return {
        h.name: h.allocations[server_id]
        for h in await dep.store.hosts.values()
        if server_id in h.allocations
    }


# --- in one process: every form a plugin runs in ------------------------------------------


def fleet_index(n: int = 6) -> Index:
    index = Index(service_down_time=60)
    for i in range(n):
        host = Host(
            name=f"h{i}",
            driver="fake",
            inventories={
                "VCPU": Inventory(total=8),
                "MEMORY_MB": Inventory(total=8192),
                "DISK_GB": Inventory(total=100),
            },
        )
        index.apply_host(Entry(key=host.name, value=host, revision=i + 1), host.name, i + 1)
        index.apply_heartbeat(Heartbeat(host=host.name, at=now(), agent_id="t"))
    return index


def boom(*_args: Any) -> Any:
    raise KeyError("oops")


FORMS: dict[str, Filter | Weigher] = {
    "mask": Filter(name="MaskBoom", mask=boom, row_local=True),
    "sql": Filter(name="SqlBoom", sql=boom),
    "bad sql": Filter(name="BadSql", sql=lambda spec: ("no_such_column > ?", [1])),
    "host_passes": Filter(name="HostBoom", host_passes=boom),
    "filter applies": Filter(name="AppliesBoom", mask=lambda c, s: None, applies=boom),
    "weigh": Weigher(name="WeighBoom", weigh=boom, row_local=True),
    "weigher applies": Weigher(name="WAppliesBoom", weigh=lambda c, s: 0, applies=boom),
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("cache_shapes", [0, 8])
async def test_each_plugin_form_that_raises_is_named(form: str, cache_shapes: int) -> None:
    plugin = FORMS[form]
    index = fleet_index()
    reg = manager.load()
    cfg = config.Config()
    ctx = reg.context(cfg, index)
    if isinstance(plugin, Filter):
        ctx.filters.append(plugin)
        kind = "filter"
    else:
        ctx.weighers.append(plugin)
        kind = "weigher"
    scheduler = FilterScheduler(ctx, cache_shapes=cache_shapes)
    flavor = Flavor(id="f", name="f", vcpus=1, ram_mb=512, disk_gb=1)
    spec = RequestSpec(server_id="s1", project="p", flavor=flavor)
    for i in range(3):  # with the cache on, the third request is served from a kept shape
        with pytest.raises(PluginRaised) as raised:
            await scheduler.select(msgspec.structs.replace(spec, server_id=f"s{i}"))
        assert (raised.value.kind, raised.value.name) == (kind, plugin.name)
        assert str(raised.value).startswith(f"{kind} {plugin.name} raised ")
    if form != "bad sql":
        assert "KeyError: 'oops'" in str(raised.value)
    # The same scheduler still decides requests the plugin lets through.
    if isinstance(plugin, Filter):
        ctx.filters.remove(plugin)
    else:
        ctx.weighers.remove(plugin)
    healthy = FilterScheduler(ctx, cache_shapes=cache_shapes)
    assert len(await healthy.select(spec)) == 6


def test_registry_names_where_a_filter_came_from(faulty_site: Path) -> None:
    reg = manager.load()
    assert reg.origin("filters", "RamFilter") == "built into hvmesh, entry point builtin_filters"
    assert reg.origin("weighers", "RAMWeigher") == "built into hvmesh, entry point builtin_weighers"
    assert reg.origin("filters", "FaultyFilter") == ORIGIN
    assert reg.origin("weighers", "FaultyWeigher") == ORIGIN
    assert reg.origin("schedulers", "filter_scheduler") == (
        "built into hvmesh, entry point filter_scheduler"
    )
    assert reg.origin("filters", "NoSuchFilter") == "unknown origin"


# --- real processes ---------------------------------------------------------------------------


async def test_a_raising_plugin_fails_its_request_and_never_the_scheduler(
    deployment: Deployment, faulty_site: Path, admin: ApiClient
) -> None:
    base = deployment.config()
    cfg = deployment.config(scheduler=with_faulty_plugins(base))
    cfg_file = deployment.tmp / "faulty.ini"
    config.write(cfg, cfg_file)
    scheduler = deployment.spawn("scheduler", cfg_file=cfg_file)
    await start_without_scheduler(deployment, cfg)
    await wait_for_services(admin.nc, subjects.SCHEDULER_SERVICE, 1)
    await make_flavor_image(admin)
    for mode in ("filter", "weigher", "move"):
        await admin(
            "flavors.create",
            {
                "name": f"faulty.{mode}",
                "vcpus": 1,
                "ram_mb": 512,
                "disk_gb": 1,
                "extra_specs": {"faulty:raise": mode},
            },
        )

    # The filter raises: twice (the second request of a shape goes through the kept
    # shape), then as a multi-create; each server ends in ERROR naming the plugin.
    ids = [*await create(admin, "faulty.filter"), *await create(admin, "faulty.filter")]
    ids += await create(admin, "faulty.filter", min_count=2, max_count=3)
    weighed = await create(admin, "faulty.weigher")
    done = await wait_all(deployment.store, {*ids, *weighed}, settled, timeout=60)
    for sid in ids:
        s = done[sid]
        assert s is not None and s.vm_state == "error" and s.fault is not None, s
        assert s.fault.message == FILTER_FAULT
        assert s.host is None and await allocations_of(deployment, sid) == {}
    s = done[weighed[0]]
    assert s is not None and s.vm_state == "error" and s.fault is not None, s
    assert s.fault.message == WEIGHER_FAULT
    actions = (await admin("servers.events.list", {"id": ids[0]}))["instance_actions"]
    assert actions[0]["message"] == "Error"

    # The scheduler process lives on and answers: a PING, and builds that do not
    # involve the faulty plugins.
    assert scheduler.poll() is None
    await wait_for_services(admin.nc, subjects.SCHEDULER_SERVICE, 1)
    await boot(deployment, admin, "healthy")

    # A move it fails (the filter raises for moves only) leaves the server where it was.
    mover = await boot(deployment, admin, "mover", flavor="faulty.move")
    await act(admin, mover.id, "migrate")
    after = await wait_server(deployment.store, mover.id, idle)
    assert after is not None
    assert (after.vm_state, after.host, after.migration) == ("active", mover.host, None)
    assert after.fault is not None and FILTER_FAULT in after.fault.message
    assert mover.host is not None
    assert list(await allocations_of(deployment, mover.id)) == [mover.host]
    assert scheduler.poll() is None


async def test_builds_wait_for_schedulers_up_to_the_deadline(
    deployment: Deployment, admin: ApiClient
) -> None:
    deadline = 6.0
    cfg = deployment.config(conductor={"scheduler_deadline": deadline}, nats={"request_timeout": 2})
    cfg_file = deployment.tmp / "schedulers.ini"
    config.write(cfg, cfg_file)
    schedulers = [deployment.spawn("scheduler", cfg_file=cfg_file) for _ in range(2)]
    await start_without_scheduler(deployment, cfg)
    await wait_for_services(admin.nc, subjects.SCHEDULER_SERVICE, 2)
    await make_flavor_image(admin)

    # Every scheduler away past the deadline: a build and a multi-create end in ERROR.
    with stopped(schedulers):
        ids = [*await create(admin, "m1.small"), *await create(admin, "m1.small", min_count=2)]
        done = await wait_all(deployment.store, set(ids), settled, timeout=60)
    for sid in ids:
        s = done[sid]
        assert s is not None and s.vm_state == "error" and s.fault is not None, s
        assert s.fault.message == "No scheduler answered within 6 s (hvmesh-scheduler)"

    # Away, but back within the deadline: the builds complete. They are continued as
    # soon as the conductor has asked for each server once (and found no answer).
    asked: dict[str, asyncio.Event] = {}
    listener = await deployment.connect("admin")

    async def seen(msg: Any) -> None:
        server_id = msgspec.json.decode(msg.data, type=RequestSpec).server_id
        asked.setdefault(server_id, asyncio.Event()).set()

    sub = await listener.subscribe(subjects.SCHED_SELECT, cb=seen)
    try:
        with stopped(schedulers):
            ids = [*await create(admin, "m1.small"), *await create(admin, "m1.small", min_count=2)]
            async with asyncio.timeout(30):
                for sid in (ids[0], ids[1]):  # the single build, and the reservation's first
                    await asked.setdefault(sid, asyncio.Event()).wait()
        done = await wait_all(deployment.store, set(ids), settled, timeout=60)
    finally:
        await sub.unsubscribe()
    for sid in ids:
        s = done[sid]
        assert s is not None and s.vm_state == "active", s
    assert all(p.poll() is None for p in schedulers)
