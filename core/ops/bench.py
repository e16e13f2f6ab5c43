"""`hvmesh bench scheduler`: placement decisions per second and latency, claims included.

It writes N simulated host records (and their heartbeats) into a deployment, starts K
real scheduler processes (`hvmesh scheduler`), sends M placement requests on
hvmesh.sched.select over NATS with a fixed number in flight, and audits every host
record afterwards: no host may hold more than its capacity, no server two claims.
Without --url it runs on its own nats-server in a temporary directory.

Every claim waits for a compare-and-set write, fsynced, so the disk sets a ceiling the
scheduler cannot beat; the result carries the raw compare-and-set rate, measured on a
scratch bucket right after the hosts are written, so runs on different days compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import numpy as np
from nats.js.api import KeyValueConfig, StorageType

from hvmesh.agents.heartbeats import GROUP_SIZE
from hvmesh.core import config
from hvmesh.core.bus import connection
from hvmesh.core.bus import micro as bus
from hvmesh.core.ops import natsserver
from hvmesh.core.ops.audit import host_findings
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import encode, now
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.protocol.records import Flavor, Heartbeat, Host, Inventory
from hvmesh.core.state import leases
from hvmesh.core.state.store import Store


class BenchResult(msgspec.Struct, kw_only=True):
    hosts: int
    requests: int
    schedulers: int
    concurrency: int
    placed: int
    no_valid_host: int
    errors: int
    seconds: float
    decisions_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    audit: str
    audit_problems: list[str]
    # The disk's compare-and-set rate (0: not measured): ms per write one at a time, and
    # writes per second with CAS_IN_FLIGHT at a time.
    cas_ms: float = 0.0
    cas_per_s: float = 0.0


class HostSize(msgspec.Struct, frozen=True):
    """What each simulated host has (before the VCPU allocation ratio)."""

    vcpus: int = 64
    cpu_ratio: float = 4.0
    memory_mb: int = 262144
    reserved_mb: int = 512
    disk_gb: int = 4000


DEFAULT_SIZE = HostSize()
CAS_IN_FLIGHT = 100
CAS_BUCKET = "bench_cas"


async def cas_rate(js: Any, writes: int = 1000) -> tuple[float, float]:
    """ms per compare-and-set write one at a time, and writes/s with CAS_IN_FLIGHT at once.

    On a scratch bucket stored as the hosts bucket is (file, fsynced per nats.conf),
    with a record of a host record's size; the bucket is deleted afterwards.
    """
    kv = await js.create_key_value(
        KeyValueConfig(bucket=CAS_BUCKET, history=1, storage=StorageType.FILE)
    )
    data = encode(bench_host(0, 5))
    try:
        revision = await kv.put("seq", data)
        started = time.perf_counter()
        for _ in range(writes):
            revision = await kv.update("seq", data, last=revision)
        sequential_ms = (time.perf_counter() - started) * 1000 / writes

        async def chain(key: str, count: int) -> None:
            rev = await kv.put(key, data)
            for _ in range(count):
                rev = await kv.update(key, data, last=rev)

        per_key = max(1, writes * 2 // CAS_IN_FLIGHT)
        started = time.perf_counter()
        await asyncio.gather(*(chain(f"k{i}", per_key) for i in range(CAS_IN_FLIGHT)))
        concurrent = CAS_IN_FLIGHT * (per_key + 1) / (time.perf_counter() - started)
    finally:
        await js.delete_key_value(CAS_BUCKET)
    return round(sequential_ms, 3), round(concurrent, 1)


BENCH_FLAVOR = Flavor(id="bench", name="bench", vcpus=2, ram_mb=2048, disk_gb=20)


def bench_request(i: int) -> RequestSpec:
    """The i-th placement request: the bench flavor; every other one names a zone. Each
    carries a claim key, as the conductor's do, so its placement lease is written too."""
    server_id = str(uuid.uuid4())
    return RequestSpec(
        server_id=server_id,
        project="bench",
        flavor=BENCH_FLAVOR,
        availability_zone=f"az{i % 4}" if i % 2 else None,
        claim_key=leases.build_key(server_id, 0, 0),
    )


def bench_name(i: int, width: int) -> str:
    return f"bench-{i:0{width}d}"


def beat_key(i: int, width: int) -> str:
    """The heartbeat record that speaks for host `i`: its group's first host, as agents do."""
    return bench_name(i - i % GROUP_SIZE, width)


def bench_host(i: int, width: int, size: HostSize = DEFAULT_SIZE) -> Host:
    """A simulated hypervisor (64 VCPU, 256 GiB, 4 TB by default) in one of four zones."""
    return Host(
        name=bench_name(i, width),
        beat_key=beat_key(i, width),
        driver="fake",
        availability_zone=f"az{i % 4}",
        hypervisor_type="fake",
        inventories={
            "VCPU": Inventory(
                total=size.vcpus, max_unit=size.vcpus, allocation_ratio=size.cpu_ratio
            ),
            "MEMORY_MB": Inventory(
                total=size.memory_mb, reserved=size.reserved_mb, max_unit=size.memory_mb
            ),
            "DISK_GB": Inventory(total=size.disk_gb, max_unit=size.disk_gb),
        },
    )


class Progress:
    """One line on stderr that counts up, for long steps."""

    def __init__(self, what: str, total: int, quiet: bool) -> None:
        self.what = what
        self.total = total
        self.quiet = quiet or not sys.stderr.isatty()
        self.done = 0
        self._shown = 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        t = time.monotonic()
        if not self.quiet and (t - self._shown > 0.2 or self.done >= self.total):
            self._shown = t
            print(f"\r  {self.what}: {self.done}/{self.total}", end="", file=sys.stderr, flush=True)
            if self.done >= self.total:
                print(file=sys.stderr)


async def seed_hosts(store: Store, count: int, quiet: bool, size: HostSize = DEFAULT_SIZE) -> None:
    width = max(5, len(str(count)))
    progress = Progress("writing host records", count, quiet)
    window = 512
    for start in range(0, count, window):
        batch = [bench_host(i, width, size) for i in range(start, min(count, start + window))]
        await asyncio.gather(*(store.hosts.put(h.name, h) for h in batch))
        progress.step(len(batch))
    await beat(store, count)


async def beat(store: Store, count: int) -> None:
    """One heartbeat for every simulated host: one record per group of GROUP_SIZE hosts,
    as an agent process running many hosts writes them (agents/heartbeats.py)."""
    width = max(5, len(str(count)))
    at = now()
    await asyncio.gather(
        *(
            store.heartbeats.put(
                bench_name(first, width),
                Heartbeat(
                    host=bench_name(first, width),
                    at=at,
                    agent_id="bench",
                    hosts=[
                        bench_name(i, width) for i in range(first, min(count, first + GROUP_SIZE))
                    ],
                ),
            )
            for first in range(0, count, GROUP_SIZE)
        )
    )


async def keep_beating(store: Store, count: int) -> None:
    """Heartbeats for every simulated host, so none goes down during a long run."""
    while True:
        await asyncio.sleep(20.0)
        await beat(store, count)


async def wait_ready(nc: Any, count: int, timeout: float) -> None:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seen)} of {count} schedulers started")
            await nc.publish("$SRV.PING.hvmesh-scheduler", b"", reply=inbox)
            with contextlib.suppress(nats.errors.TimeoutError):
                while len(seen) < count:
                    msg = await sub.next_msg(timeout=0.5)
                    if msg.data:
                        seen.add(msgspec.json.decode(msg.data)["id"])
    finally:
        await sub.unsubscribe()


async def run(
    hosts: int,
    requests: int,
    schedulers: int = 1,
    concurrency: int = 8,
    url: str | None = None,
    user: str = "",
    password: str = "",
    quiet: bool = False,
    size: HostSize = DEFAULT_SIZE,
) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="hvmesh-bench-") as tmp:
        server = None
        if url is None:
            server = await natsserver.start(
                Path(tmp) / "nats", port=natsserver.free_port(), leaf_port=natsserver.free_port()
            )
            url, user, password = server.address, "hvmesh", server.passwords["service"]
        cfg = config.Config()
        cfg = msgspec.structs.replace(
            cfg,
            nats=msgspec.structs.replace(cfg.nats, url=url, user=user, password=password),
            DEFAULT=msgspec.structs.replace(cfg.DEFAULT, log_level="warning"),
        )
        cfg_path = Path(tmp) / "bench.ini"
        config.write(cfg, cfg_path)
        procs: list[subprocess.Popen[bytes]] = []
        nc = await connection.connect(cfg.nats, "hvmesh-bench")
        beats: asyncio.Task[None] | None = None
        try:
            store = await Store(nc.jetstream()).open()
            await seed_hosts(store, hosts, quiet, size)
            # Before the heartbeats start and the schedulers load: the placements then
            # begin as long after seeding as they would without this measurement.
            try:
                cas_ms, cas_per_s = await cas_rate(nc.jetstream())
            except Exception:  # not allowed to make a bucket (--url): 0 means not measured
                cas_ms, cas_per_s = 0.0, 0.0
            beats = asyncio.create_task(keep_beating(store, hosts))
            env = {**os.environ, "HVMESH_CONFIG": str(cfg_path)}
            exe = str(Path(sys.executable).parent / "hvmesh")
            for _ in range(schedulers):
                procs.append(
                    subprocess.Popen([exe, "scheduler"], env=env, stdout=subprocess.DEVNULL)
                )
            if not quiet:
                print(
                    f"  starting {schedulers} scheduler(s) and loading the index", file=sys.stderr
                )
            await wait_ready(nc, schedulers, timeout=120 + hosts / 1000)
            result = await place(nc, store, hosts, requests, schedulers, concurrency, quiet)
            result.cas_ms, result.cas_per_s = cas_ms, cas_per_s
        finally:
            if beats is not None:
                beats.cancel()
            stop_processes(procs)
            await nc.close()
            if server is not None:
                server.stop()
        return result


def stop_processes(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """Terminate every process, then kill the ones not gone within `grace` seconds."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()


async def place(
    nc: Any,
    store: Store,
    hosts: int,
    requests: int,
    schedulers: int,
    concurrency: int,
    quiet: bool,
    request: Callable[[int], RequestSpec] | None = None,
) -> BenchResult:
    """`requests` placements, `concurrency` at a time (the i-th is `request(i)`, by
    default bench_request's), then the host records audited."""
    make = request or bench_request
    latencies = np.zeros(requests, dtype=np.float64)
    outcome = {"placed": 0, "none": 0, "errors": 0}
    progress = Progress("placing", requests, quiet)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            spec = make(i)
            t0 = time.perf_counter()
            try:
                msg = await nc.request(subjects.SCHED_SELECT, encode(spec), timeout=30)
                bus.raise_for_error(msg)
                reply = msgspec.json.decode(msg.data)
                outcome["placed" if reply.get("host") else "none"] += 1
            except Exception:
                outcome["errors"] += 1
            latencies[i] = time.perf_counter() - t0
            progress.step()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    problems = [
        f"{f.host}: {f.kind}: {f.message}" for f in host_findings(await store.hosts.values())
    ]
    ms = latencies * 1000
    return BenchResult(
        hosts=hosts,
        requests=requests,
        schedulers=schedulers,
        concurrency=concurrency,
        placed=outcome["placed"],
        no_valid_host=outcome["none"],
        errors=outcome["errors"],
        seconds=round(seconds, 3),
        decisions_per_s=round(requests / seconds, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        max_ms=round(float(ms.max()), 3),
        audit="clean" if not problems else f"{len(problems)} problems",
        audit_problems=problems[:20],
    )


async def decisions(hosts: int, count: int = 3000, cache: bool = True) -> dict[str, float]:
    """The filter scheduler's decision alone, in this process: ms per select() over `count`
    requests (as `place` sends them) with the default filters and weighers, each claim
    applied to the index at once as the scheduler service does. No NATS, no disk.

        python -c "import asyncio; from hvmesh.core import bench; \\
                   print(asyncio.run(bench.decisions(100000)))"
    """
    from hvmesh.core.state.inventory import Index
    from hvmesh.core.state.store import Entry
    from hvmesh.plugins import manager
    from hvmesh.schedulers.filter_scheduler import FilterScheduler
    from hvmesh.schedulers.score_cache import MAX_SHAPES

    cfg = config.Config()
    index = Index(service_down_time=cfg.DEFAULT.service_down_time)
    width = max(5, len(str(hosts)))
    for i in range(hosts):
        host = bench_host(i, width)
        index.apply_host(Entry(key=host.name, value=host, revision=i + 1), host.name, i + 1)
        index.apply_heartbeat(Heartbeat(host=host.name, at=now(), agent_id="bench"))
    registry = manager.configured(cfg)
    ctx = registry.context(cfg, index)
    scheduler = FilterScheduler(ctx, cache_shapes=MAX_SHAPES if cache else 0)
    revision = hosts
    took = np.zeros(count)
    for i in range(count):
        spec = bench_request(i)
        started = time.perf_counter()
        names = await scheduler.select(spec)
        took[i] = (time.perf_counter() - started) * 1000
        if names:  # the claim, as placement.claim writes it
            entry = index.hosts[names[0]]
            record = msgspec.structs.replace(
                entry.value,
                allocations={**entry.value.allocations, spec.server_id: spec.flavor.resources()},
                in_progress=[*entry.value.in_progress, spec.server_id],
            )
            revision += 1
            index.apply_host(
                Entry(key=names[0], value=record, revision=revision), names[0], revision
            )
    return {
        "hosts": hosts,
        "decisions": count,
        "mean_ms": round(float(took.mean()), 3),
        "p50_ms": round(float(np.percentile(took, 50)), 3),
        "p99_ms": round(float(np.percentile(took, 99)), 3),
        "max_ms": round(float(took.max()), 3),
    }
