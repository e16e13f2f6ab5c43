"""`hvmesh bench list`: how long a page of a large listing takes, servers and hypervisors.

It runs nats-server and one `hvmesh api` process on a temporary store, writes N server
records (ACTIVE, spread over H simulated hosts, in one project) and the H host records
straight into their buckets, waits until the API lists them all, then times
`servers.list` (every project, a page of `--page` records, walked from the first page to
the last by marker) and `hypervisors.list` the same way, each request as a client sees
it over NATS. Speed is reported, never asserted.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from hvmesh.core.bus import connection
from hvmesh.core.bus import micro as bus
from hvmesh.core.ops.bench import Progress, seed_hosts, stop_processes
from hvmesh.core.ops.bench_boot import HVMESH, percentiles, start_site
from hvmesh.core.protocol import states, subjects
from hvmesh.core.protocol.records import Flavor, Server
from hvmesh.core.state.store import Store

PROJECT = "bench-list"
FLAVOR = Flavor(id="bench-list-flavor", name="bench.list", vcpus=1, ram_mb=64, disk_gb=1)
WINDOW = 512  # records written at once


class ListTimes(msgspec.Struct, kw_only=True):
    pages: int
    records: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    first_page_ms: float


class ListBenchResult(msgspec.Struct, kw_only=True):
    servers: int
    hosts: int
    page: int
    load_seconds: float  # API start until it listed every server
    servers_list: ListTimes
    hypervisors_list: ListTimes


def bench_server(i: int, hosts: int, width: int) -> Server:
    """Server i, ACTIVE on host i mod `hosts` (named as bench.seed_hosts names them)."""
    return Server(
        id=str(uuid.UUID(int=i + 1)),
        name=f"list-{i}",
        project=PROJECT,
        user="bench",
        flavor=FLAVOR,
        image_id="bench-list-image",
        image_name="bench-list",
        vm_state=states.ACTIVE,
        task_state=None,
        power_state=1,
        host=f"bench-{i % hosts:0{width}d}",
    )


async def seed_servers(store: Store, count: int, hosts: int, quiet: bool) -> None:
    width = max(5, len(str(hosts)))
    progress = Progress("writing server records", count, quiet)
    for start in range(0, count, WINDOW):
        batch = [bench_server(i, hosts, width) for i in range(start, min(count, start + WINDOW))]
        await asyncio.gather(*(store.servers.put(s.id, s) for s in batch))
        progress.step(len(batch))


async def walk(nc: Any, endpoint: str, key: str, body: dict[str, Any], page: int) -> ListTimes:
    """Every page of `endpoint`, first to last by marker, each request timed."""
    times: list[float] = []
    records, marker = 0, None
    while True:
        request = {**body, "limit": page} | ({"marker": marker} if marker else {})
        started = time.perf_counter()
        reply = await bus.call(nc, subjects.api(*endpoint.split(".")), request, 60.0)
        times.append((time.perf_counter() - started) * 1000)
        records += len(reply[key])
        links = reply.get(f"{key}_links") or []
        marker = links[0]["marker"] if links else None
        if marker is None:
            break
    p50, p99 = percentiles([t / 1000 for t in times])
    return ListTimes(
        pages=len(times),
        records=records,
        p50_ms=p50,
        p99_ms=p99,
        max_ms=round(max(times), 2),
        first_page_ms=round(times[0], 2),
    )


async def wait_listed(nc: Any, servers: int, timeout: float) -> None:
    """Until the API answers a page after the last server written (an unknown marker is a
    400): its index, loaded as it starts, holds them all."""
    last = str(uuid.UUID(int=servers))
    deadline = time.monotonic() + timeout
    while True:
        try:
            await bus.call(
                nc,
                subjects.api("servers", "list"),
                {"all_projects": True, "limit": 1, "marker": last},
                5.0,
            )
            return
        except Exception:  # not answering yet, or the marker not indexed yet
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)  # the API loads in its own time: polled, bounded


async def run(servers: int, hosts: int, page: int, quiet: bool = False) -> ListBenchResult:
    with tempfile.TemporaryDirectory(prefix="hvmesh-bench-list-") as tmp:
        server, cfg, env = await start_site(Path(tmp), hosts)
        procs: list[subprocess.Popen[bytes]] = []
        nc = await connection.connect(cfg.nats, "hvmesh-bench-list")
        try:
            store = await Store(nc.jetstream()).open()
            await seed_hosts(store, hosts, quiet)
            await seed_servers(store, servers, hosts, quiet)
            with open(Path(tmp) / "api.log", "ab") as log:
                started = time.perf_counter()
                procs.append(
                    subprocess.Popen([HVMESH, "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
                )
                await wait_listed(nc, servers, 600.0)
                load_s = time.perf_counter() - started
                if not quiet:
                    print("  walking the listings", file=sys.stderr, flush=True)
                body = {"all_projects": True}
                listed = await walk(nc, "servers.list", "servers", body, page)
                hypervisors = await walk(nc, "hypervisors.list", "hypervisors", {}, page)
        finally:
            stop_processes(procs)
            await nc.close()
            server.stop()
    return ListBenchResult(
        servers=servers,
        hosts=hosts,
        page=page,
        load_seconds=round(load_s, 1),
        servers_list=listed,
        hypervisors_list=hypervisors,
    )
