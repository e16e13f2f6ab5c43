"""200 concurrent boots on 10 small hosts, two schedulers and two conductors as processes.

No host may ever hold more than it has, every server ends ACTIVE or ERROR (no valid
host), and exactly as many are ACTIVE as fit.
"""

from __future__ import annotations

import asyncio

from hvmesh.core.ops import audit
from tests.support import ApiClient, Deployment, settled, wait_all, wait_for_services

HOSTS = 10
PER_HOST = 4  # 4 VCPU, 4096 MB, 40 GB each; the flavor takes a quarter of each
REQUESTS = 200


async def test_concurrent_creates_never_oversubscribe(
    deployment: Deployment, admin: ApiClient
) -> None:
    cfg = deployment.config_file(
        "services",
        fake={"vcpus": 4, "memory_mb": 4096, "local_gb": 40, "spawn_delay": 0.05},
        scheduler={"host_subset_size": 3},
    )
    store = deployment.store
    assert store is not None
    deployment.spawn(
        "agent", "--driver", "fake", "--host", "small", "--count", str(HOSTS), cfg_file=cfg
    )
    watcher = await store.hosts.kv.watchall()
    async with asyncio.timeout(30):
        seen: set[str] = set()
        async for e in watcher:
            if e is not None:
                seen.add(e.key)
            if len(seen) == HOSTS:
                break
    await watcher.stop()

    deployment.spawn("api", cfg_file=cfg)
    deployment.spawn("scheduler", cfg_file=cfg)
    deployment.spawn("scheduler", cfg_file=cfg)
    deployment.spawn("conductor", cfg_file=cfg)
    deployment.spawn("conductor", cfg_file=cfg)
    await wait_for_services(admin.nc, "hvmesh-api", 1)
    await wait_for_services(admin.nc, "hvmesh-scheduler", 2)

    await admin("flavors.create", {"name": "quarter", "vcpus": 1, "ram_mb": 1024, "disk_gb": 10})
    await admin("images.create", {"name": "cirros"})
    replies = await asyncio.gather(
        *(
            admin("servers.create", {"name": f"vm-{i}", "flavor": "quarter", "image": "cirros"})
            for i in range(REQUESTS)
        )
    )
    ids = {r["server"]["id"] for r in replies}
    assert len(ids) == REQUESTS

    final = await wait_all(store, ids, settled, timeout=180)

    active = [s for s in final.values() if s is not None and s.vm_state == "active"]
    errored = [s for s in final.values() if s is not None and s.vm_state == "error"]
    assert len(active) + len(errored) == REQUESTS
    assert len(active) == HOSTS * PER_HOST
    assert all(s.fault is not None and s.fault.message.startswith("No valid host") for s in errored)

    assert await audit.audit(store) == []
    hosts = await store.hosts.values()
    assert len(hosts) == HOSTS
    for host in hosts:
        on_host = [s for s in active if s.host == host.name]
        assert set(host.allocations) == {s.id for s in on_host}
        for rc, inv in host.inventories.items():
            used = sum(s.flavor.resources()[rc] for s in on_host)
            assert used == host.used(rc) <= inv.capacity()
