"""`hvmesh bench boot`: boots per second through the whole mesh, API to ACTIVE, with the
time each stage takes, then deletes, then the scheduler's own decisions per second on the
same deployment, so the two compare as a ratio measured in one run.

It runs nats-server, `hvmesh api`, `hvmesh conductor`, `hvmesh scheduler` and one
`hvmesh agent --driver fake --count N` (spawns and destroys take no time) as separate
processes on a temporary store, and sends M creates with C in flight. The stages are
seen from outside, on the bench's own clock, by plain subscriptions to the subjects each
step publishes on (none of them changes what the services do):

    api        create sent          -> its build task published (hvmesh.tasks.build)
    queue      task published       -> the conductor asks a scheduler (hvmesh.sched.select)
    schedule   select asked         -> the claim written to the host record (KV hosts)
    dispatch   claim written        -> the agent's work published (hvmesh.work.<host>)
    agent      work published       -> the agent's event (hvmesh.events.<host>.<server>)
    events     event published      -> the server record written ACTIVE (KV servers)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from hvmesh.core import config
from hvmesh.core.bus import connection
from hvmesh.core.bus import micro as bus
from hvmesh.core.ops import natsserver
from hvmesh.core.ops.bench import Progress, bench_request, cas_rate, place, stop_processes
from hvmesh.core.ops.chaos_deploy import answering
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.state import liveness
from hvmesh.core.state.store import Store

STAGES = ("api", "queue", "schedule", "dispatch", "agent", "events")
# What marks the end of each stage (the first stage starts when the create is sent).
MARKS = ("task", "select", "claim", "work", "event", "active")
FLAVOR, IMAGE = "bench.boot", "bench-boot-image"
HOST_PREFIX = "bootbench"


class StageTimes(msgspec.Struct, kw_only=True):
    p50_ms: float
    p99_ms: float


class BootBenchResult(msgspec.Struct, kw_only=True):
    hosts: int
    servers: int
    concurrency: int
    active: int
    errors: int
    boot_seconds: float
    boots_per_s: float
    boot_p50_ms: float
    boot_p99_ms: float
    stages: dict[str, StageTimes]
    delete_seconds: float
    deletes_per_s: float
    delete_p50_ms: float
    delete_p99_ms: float
    scheduler_decisions_per_s: float
    scheduler_p99_ms: float
    boots_to_decisions: float  # boots/s over the scheduler's decisions/s, same run
    cas_per_s: float
    start_seconds: float  # until every host was up
    # Per server booted, across every process: messages stored in JetStream (each KV
    # write, task, work item and event, every one fsynced; not the hosts' heartbeats,
    # which go on whatever the boots do) and JetStream API requests (reads by key,
    # consumer and stream calls; publishes and acks are not counted).
    writes_per_boot: float = 0.0
    js_requests_per_boot: float = 0.0
    writes_by_stream: dict[str, float] = msgspec.field(default_factory=dict)  # per boot


class _Slim(msgspec.Struct):
    """The fields of a server record the bench reads."""

    vm_state: str = ""
    task_state: str | None = None


class _Ids(msgspec.Struct):
    server_id: str = ""


class Watch:
    """When each server passed each mark, on this process's clock."""

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, float]] = {}
        self.deleted: dict[str, float] = {}
        self.active_waiters: dict[str, asyncio.Future[None]] = {}
        self.gone_waiters: dict[str, asyncio.Future[None]] = {}
        self.awaiting_claim: set[str] = set()  # asked a scheduler, claim not seen yet
        self._ids = msgspec.json.Decoder(_Ids)
        self._slim = msgspec.json.Decoder(_Slim)
        self._subs: list[Any] = []

    def mark(self, server_id: str, what: str) -> None:
        marks = self.marks.setdefault(server_id, {})
        if what not in marks:
            marks[what] = time.perf_counter()
            if what == "select":
                self.awaiting_claim.add(server_id)
            elif what == "claim":
                self.awaiting_claim.discard(server_id)

    async def start(self, nc: Any) -> None:
        def by_body(what: str) -> Callable[[Any], Any]:
            async def take(msg: Any) -> None:
                sid = self._ids.decode(msg.data).server_id
                if sid:
                    self.mark(sid, what)

            return take

        async def event(msg: Any) -> None:
            self.mark(msg.subject.rsplit(".", 1)[-1], "event")

        async def host_write(msg: Any) -> None:
            # A claim adds the server to the host's allocations: its id appears in the
            # record. Servers still waiting for their claim are few (at most C).
            data = msg.data
            for sid in [s for s in self.awaiting_claim if s.encode() in data]:
                self.mark(sid, "claim")

        async def server_write(msg: Any) -> None:
            sid = msg.subject.rsplit(".", 1)[-1]
            if not msg.data:  # a delete marker
                self.deleted.setdefault(sid, time.perf_counter())
                waiter = self.gone_waiters.pop(sid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return
            record = self._slim.decode(msg.data)
            if record.vm_state in ("active", "error") and record.task_state is None:
                self.mark(sid, "active" if record.vm_state == "active" else "error")
                waiter = self.active_waiters.pop(sid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

        # Room for any burst: a dropped message would be a lost mark.
        room = {"pending_msgs_limit": 1_000_000, "pending_bytes_limit": 1 << 30}
        self._subs = [
            await nc.subscribe(subjects.TASKS_ALL, cb=by_body("task"), **room),
            await nc.subscribe(subjects.SCHED_SELECT, cb=by_body("select"), **room),
            await nc.subscribe(subjects.WORK_ALL, cb=by_body("work"), **room),
            await nc.subscribe(subjects.EVENTS_ALL, cb=event, **room),
            await nc.subscribe(f"$KV.{subjects.HOSTS_BUCKET}.>", cb=host_write, **room),
            await nc.subscribe(f"$KV.{subjects.SERVERS_BUCKET}.>", cb=server_write, **room),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()


def any_zone_request(i: int) -> RequestSpec:
    """The scheduler bench's i-th request, in no zone: every simulated host may take it."""
    return msgspec.structs.replace(bench_request(i), availability_zone=None)


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    ms = np.array(values) * 1000
    return round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 99)), 2)


def stage_times(watch: Watch, sent: dict[str, float]) -> dict[str, StageTimes]:
    """Each stage's p50 and p99 over the servers that passed both of its marks."""
    spans: dict[str, list[float]] = {s: [] for s in STAGES}
    for sid, t0 in sent.items():
        marks = watch.marks.get(sid, {})
        times = [t0, *(marks.get(m) for m in MARKS)]
        for stage, start, end in zip(STAGES, times[:-1], times[1:], strict=True):
            if start is not None and end is not None:
                spans[stage].append(max(0.0, end - start))
    result = {}
    for stage, values in spans.items():
        p50, p99 = percentiles(values)
        result[stage] = StageTimes(p50_ms=p50, p99_ms=p99)
    return result


async def _in_flight(
    count: int, concurrency: int, one: Callable[[int], Any], progress: Progress
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())
            progress.step()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def boot_all(
    nc: Any, watch: Watch, servers: int, concurrency: int, timeout: float, quiet: bool
) -> tuple[dict[str, float], list[float], int, float]:
    """Every create, C at a time, each until ACTIVE: (sent times, latencies, errors, s)."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        body = {"name": f"boot-{i}", "flavor": FLAVOR, "image": IMAGE}
        try:
            reply = await bus.call(nc, subjects.api("servers", "create"), body, timeout=timeout)
            sid = reply["server"]["id"]
            sent[sid] = t0
            waiter = loop.create_future()
            watch.active_waiters[sid] = waiter
            if "active" in watch.marks.get(sid, {}) or "error" in watch.marks.get(sid, {}):
                waiter.set_result(None)  # it was ACTIVE before the reply came back
            await asyncio.wait_for(waiter, timeout)
            if "active" in watch.marks.get(sid, {}):
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
        except Exception:
            errors += 1

    started = time.perf_counter()
    await _in_flight(servers, concurrency, one, Progress("booting", servers, quiet))
    return sent, latencies, errors, time.perf_counter() - started


async def delete_all(
    nc: Any, watch: Watch, ids: list[str], concurrency: int, timeout: float, quiet: bool
) -> tuple[list[float], float]:
    """Every delete, C at a time, each until the record is gone: (latencies, seconds)."""
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        sid = ids[i]
        t0 = time.perf_counter()
        waiter = loop.create_future()
        watch.gone_waiters[sid] = waiter
        try:
            await bus.call(nc, subjects.api("servers", "delete"), {"id": sid}, timeout=timeout)
            await asyncio.wait_for(waiter, timeout)
            latencies.append(time.perf_counter() - t0)
        except Exception:
            watch.gone_waiters.pop(sid, None)

    started = time.perf_counter()
    await _in_flight(len(ids), concurrency, one, Progress("deleting", len(ids), quiet))
    return latencies, time.perf_counter() - started


def bench_settings(url: str, password: str, hosts: int) -> config.Config:
    raw: dict[str, dict[str, Any]] = {
        "DEFAULT": {"log_level": "warning", "log_format": "json"},
        "nats": {"url": url, "user": "hvmesh", "password": password},
        "fake": {"spawn_delay": 0.0, "destroy_delay": 0.0, "fail_rate": 0.0},
        "quota": {"instances": -1, "cores": -1, "ram": -1},
    }
    return msgspec.convert(raw, config.Config, strict=False)


HVMESH = str(Path(sys.executable).parent / "hvmesh")


async def start_site(
    tmp: Path, hosts: int
) -> tuple[natsserver.NatsServer, config.Config, dict[str, str]]:
    """A benchmark's nats-server on free ports under `tmp`, its settings written there,
    and the environment its `hvmesh` processes run with."""
    server = await natsserver.start(
        tmp / "nats", port=natsserver.free_port(), leaf_port=natsserver.free_port()
    )
    cfg = bench_settings(server.address, server.passwords["service"], hosts)
    cfg_path = tmp / "bench.ini"
    config.write(cfg, cfg_path)
    env = {**os.environ, "HVMESH_CONFIG": str(cfg_path), "HVMESH_STATE_DIR": str(tmp / "state")}
    return server, cfg, env


async def counters(js: Any) -> tuple[dict[str, int], int]:
    """(messages ever stored, by stream; JetStream API requests so far)."""
    stored = {info.config.name: info.state.last_seq or 0 for info in await js.streams_info()}
    return stored, (await js.account_info()).api.total


async def wait_hosts_up(store: Store, hosts: int, timeout: float, quiet: bool) -> float:
    """Until every simulated host heartbeats; the seconds it took."""
    started = time.perf_counter()
    progress = Progress("hosts up", hosts, quiet)
    deadline = started + timeout
    fresh = 0
    while True:
        cutoff = now() - 60.0
        count = sum(1 for h in await liveness.up_since(store, cutoff) if h.startswith(HOST_PREFIX))
        progress.step(count - fresh)
        fresh = count
        if count >= hosts:
            return time.perf_counter() - started
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {count} of {hosts} hosts came up in {timeout:g}s")
        await asyncio.sleep(1.0)  # heartbeats land in their own time: polled, bounded


async def wait_services(nc: Any, timeout: float) -> None:
    """Until the API and a scheduler answer: they start beside the hosts, in their own time."""
    deadline = time.perf_counter() + timeout
    while not (
        await answering(nc, subjects.API_SERVICE)
        and await answering(nc, subjects.SCHEDULER_SERVICE)
    ):  # each ping waits its own bounded moment for answers
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the API or the scheduler did not answer within {timeout:g}s")


async def run(
    hosts: int, servers: int, concurrency: int, decisions: int = 2000, quiet: bool = False
) -> BootBenchResult:
    timeout = 120.0
    with tempfile.TemporaryDirectory(prefix="hvmesh-bench-boot-") as tmp:
        server, cfg, env = await start_site(Path(tmp), hosts)
        procs: list[subprocess.Popen[bytes]] = []
        nc = await connection.connect(cfg.nats, "hvmesh-bench-boot")
        watch = Watch()
        try:
            store = await Store(nc.jetstream()).open()
            cas_per_s = (await cas_rate(nc.jetstream()))[1]
            log = open(Path(tmp) / "services.log", "ab")  # noqa: SIM115 (closed below)
            agent = ["agent", "--driver", "fake", "--count", str(hosts), "--host", HOST_PREFIX]
            for argv in (["api"], ["conductor"], ["scheduler"], agent):
                procs.append(
                    subprocess.Popen([HVMESH, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
                )
            start_s = await wait_hosts_up(store, hosts, 300 + hosts / 20, quiet)
            await wait_services(nc, timeout)
            call = subjects.api
            await bus.call(
                nc, call("flavors", "create"), {"name": FLAVOR, "vcpus": 1, "ram_mb": 64}
            )
            await bus.call(nc, call("images", "create"), {"name": IMAGE, "disk_format": "raw"})
            await watch.start(nc)
            before = await counters(nc.jetstream())
            sent, boot_lat, errors, boot_s = await boot_all(
                nc, watch, servers, concurrency, timeout, quiet
            )
            after = await counters(nc.jetstream())
            ids = [sid for sid in sent if "active" in watch.marks.get(sid, {})]
            delete_lat, delete_s = await delete_all(nc, watch, ids, concurrency, timeout, quiet)
            await watch.stop()
            sched = await place(
                nc, store, hosts, decisions, 1, concurrency, quiet, any_zone_request
            )
            log.close()
        finally:
            stop_processes(procs)
            await nc.close()
            server.stop()
    boots_per_s = len(boot_lat) / boot_s if boot_s else 0.0
    wrote = {
        name: seq - before[0].get(name, 0)
        for name, seq in after[0].items()
        if name != f"KV_{subjects.HEARTBEATS_BUCKET}"
    }
    b50, b99 = percentiles(boot_lat)
    d50, d99 = percentiles(delete_lat)
    return BootBenchResult(
        hosts=hosts,
        servers=servers,
        concurrency=concurrency,
        active=len(boot_lat),
        errors=errors,
        boot_seconds=round(boot_s, 2),
        boots_per_s=round(boots_per_s, 1),
        boot_p50_ms=b50,
        boot_p99_ms=b99,
        stages=stage_times(watch, sent),
        delete_seconds=round(delete_s, 2),
        deletes_per_s=round(len(delete_lat) / delete_s, 1) if delete_s else 0.0,
        delete_p50_ms=d50,
        delete_p99_ms=d99,
        scheduler_decisions_per_s=sched.decisions_per_s,
        scheduler_p99_ms=sched.p99_ms,
        boots_to_decisions=round(boots_per_s / sched.decisions_per_s, 3)
        if sched.decisions_per_s
        else 0.0,
        cas_per_s=round(cas_per_s, 1),
        start_seconds=round(start_s, 1),
        writes_per_boot=round(sum(wrote.values()) / servers, 1),
        js_requests_per_boot=round((after[1] - before[1]) / servers, 1),
        writes_by_stream={k: round(v / servers, 2) for k, v in sorted(wrote.items()) if v},
    )
