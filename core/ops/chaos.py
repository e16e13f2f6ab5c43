"""`hvmesh bench chaos`: load on a deployment of separate processes while a seeded schedule
kill -9's each of them, then checks that nothing acknowledged was lost and nothing is stuck
or leaked.

The deployment (core/ops/chaos_deploy.py) runs nats-server, the API, two conductors, two
schedulers and agent processes of four simulated hosts each, some of whose spawns fail.
The load (core/ops/chaos_load.py) creates servers and runs actions through the API. A
schedule drawn from random.Random(seed) kills a conductor, a scheduler, an agent process
and the API at least once each, and nats-server exactly once (started again on the same
port and store); each comes back after a short pause. Then the load stops, the servers
settle and the checks run (core/ops/chaos_checks.py). The seed is printed first: the
same seed gives the same schedule and the same choices of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from hvmesh.core.bus.start_retry import RetryPolicy, StartGuard
from hvmesh.core.ops import chaos_checks, chaos_load
from hvmesh.core.ops.chaos_deploy import ChaosDeployment
from hvmesh.core.state.store import Store

ROLES = ("api", "conductor", "scheduler", "agent")
START_TIMEOUT = 120.0  # seconds the harness retries its first requests to a starting NATS


class Kill(msgspec.Struct, frozen=True, kw_only=True):
    """One kill -9 of the schedule: when (seconds into the load), which process, and how
    long it stays down before it is started again."""

    at: float
    role: str
    index: int
    down: float
    # nats-server's kill takes a service down with it, started again while nats-server
    # is still away: it must keep trying until nats-server is back.
    also: str = ""
    also_index: int = 0


class ChaosReport(msgspec.Struct, kw_only=True):
    seed: int
    hosts: int
    duration_s: float
    cluster: int = 0  # nodes of the core's NATS cluster; 0: one nats-server
    longest_pause_s: float = 0.0  # the longest the API answered nothing during the load
    catch_up_s: float = 0.0  # until every stream's copies were current again (a cluster)
    load_s: float = 0.0
    settle_s: float = 0.0
    drain_s: float = 0.0
    total_s: float = 0.0
    kills: dict[str, int] = msgspec.field(default_factory=dict)
    process_restarts: int = 0
    unexpected_exits: list[str] = msgspec.field(default_factory=list)
    requests: int = 0
    creates_acknowledged: int = 0
    servers_acknowledged: int = 0
    deletes_acknowledged: int = 0
    requests_by_kind: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    outcomes: dict[str, int] = msgspec.field(default_factory=dict)
    faults: dict[str, int] = msgspec.field(default_factory=dict)
    api_failures: list[str] = msgspec.field(default_factory=list)
    audit: list[str] = msgspec.field(default_factory=list)
    findings: list[str] = msgspec.field(default_factory=list)
    passed: bool = False
    logs: str = ""


def schedule(rng: random.Random, seconds: float, roles: dict[str, int]) -> list[Kill]:
    """Kills spread over the load: each role once in a shuffled order with nats-server
    among them exactly once (with a service killed and started again while it is away),
    then one more every ~12 s of the load, nats-server excepted."""
    count = max(len(ROLES) + 1, round(seconds / 12))
    order = [*ROLES, "nats"]
    rng.shuffle(order)
    order += [rng.choice(ROLES) for _ in range(count - len(order))]
    window = seconds * 0.85
    gap = window / count
    kills: list[Kill] = []
    for i, role in enumerate(order):
        also = rng.choice(ROLES) if role == "nats" else ""
        kills.append(
            Kill(
                at=round(seconds * 0.05 + i * gap + rng.uniform(0, gap * 0.5), 2),
                role=role,
                index=rng.randrange(roles.get(role, 1)),
                down=round(rng.uniform(0.5, 3.0), 2),
                also=also,
                also_index=rng.randrange(roles.get(also, 1)) if also else 0,
            )
        )
    return kills


class Status:
    """One line on stderr, rewritten, while a terminal watches."""

    def __init__(self, quiet: bool) -> None:
        self.show = not quiet and sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        if self.show:
            print(f"\r\033[K  {text}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.show:
            print(file=sys.stderr, flush=True)


async def chaos(
    dep: ChaosDeployment,
    plan: list[Kill],
    report: ChaosReport,
    status: Status,
    load: chaos_load.Load,
    stop: asyncio.Event,
) -> None:
    """Carry out `plan` while the load runs; restart whatever exits on its own."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = list(plan)
    while not stop.is_set():
        for gone in dep.check_exits():
            report.unexpected_exits.append(f"{gone.name} exited ({gone.code}): {gone.tail}")
        if pending and loop.time() - started >= pending[0].at:
            k = pending.pop(0)
            dep.kill(k.role, k.index)
            report.kills[k.role] = report.kills.get(k.role, 0) + 1
            status(f"{loop.time() - started:5.0f}s  kill -9 {k.role}-{k.index}")
            if k.also:
                dep.kill(k.also, k.also_index)
                report.kills[k.also] = report.kills.get(k.also, 0) + 1
                await dep.restart(k.also, k.also_index)
            await asyncio.sleep(k.down)  # down for the schedule's pause
            await dep.restart(k.role, k.index)
        status(
            f"{loop.time() - started:5.0f}s  {load.sent} requests, "
            f"{len(load.ledger.live())} servers, {sum(report.kills.values())} kills"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def run(
    duration: float,
    seed: int,
    hosts: int = 12,
    rate: float = 4.0,
    concurrency: int = 8,
    fail_rate: float = 0.05,
    settle_limit: float = 150.0,
    workdir: Path | None = None,
    quiet: bool = False,
    cluster: int = 0,
) -> ChaosReport:
    """The whole run; keeps its directory (logs, store) when a check failed, or when
    `workdir` is given. With `cluster`, NATS is a cluster of that many nodes, every stream
    replicated on each, and the nats-server killed is one node; the run also waits for
    every stream's copies to be current again."""
    print(f"chaos seed {seed}", file=sys.stderr, flush=True)
    began = time.monotonic()
    keep = workdir is not None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="hvmesh-chaos-"))
    rng = random.Random(seed)
    report = ChaosReport(
        seed=seed, hosts=hosts, duration_s=duration, logs=str(workdir), cluster=cluster
    )
    status = Status(quiet)
    dep = ChaosDeployment(workdir, hosts, fail_rate=fail_rate, cluster=cluster)
    checks = chaos_checks.Checks(workdir / "logs")
    try:
        status("starting nats-server and the services")
        await dep.start()
        admin = await dep.connect("admin")
        service = await dep.connect("service")
        try:
            # A cluster just started may still be electing its JetStream leaders: the
            # harness retries its own first requests as the services retry their starts.
            guard = StartGuard(RetryPolicy(timeout=START_TIMEOUT))
            js = service.jetstream()
            store = await guard.retry("chaos store", Store(js, replicas=cluster or 1).open)
            await guard.retry("chaos deployment", lambda: dep.wait_ready(admin, store))
            await chaos_load.prepare(admin)
            plan = schedule(rng, duration, dep.roles())
            ledger = chaos_load.Ledger()
            load = chaos_load.Load(
                admin, store, rng, ledger, rate, concurrency, live_target=hosts * 12
            )
            stop = asyncio.Event()
            killer = asyncio.create_task(chaos(dep, plan, report, status, load, stop))
            t0 = time.monotonic()
            try:
                await load.run(duration)
            finally:
                stop.set()
                await killer
            report.load_s = round(time.monotonic() - t0, 1)
            report.longest_pause_s = load.longest_pause()
            fill(report, load, ledger)
            for text in ledger.failures:  # a 500 is an unhandled error, whatever the chaos
                checks.add("load" if text.startswith("load:") else "api-failure", text)
            await dep.restore_nats()  # in case the schedule's pause outlasted the load

            def settling(busy: int) -> None:
                for gone in dep.check_exits():
                    report.unexpected_exits.append(f"{gone.name} exited ({gone.code}): {gone.tail}")
                status(f"settling: {busy} servers busy")

            report.settle_s = await chaos_checks.settle(store, settle_limit, settling)
            if cluster:
                status("waiting for every stream's copies to catch up")
                report.catch_up_s = await chaos_checks.caught_up(
                    service.jetstream(), cluster, settle_limit, checks
                )
            report.outcomes, report.faults = await chaos_checks.check_servers(store, ledger, checks)
            await chaos_checks.check_state(store, checks)
            assert dep.cfg is not None
            report.audit = await chaos_checks.check_audit(store, service, dep.cfg, checks)
            report.drain_s = await chaos_checks.drain(
                store, admin, settle_limit, checks, lambda n: status(f"deleting: {n} left")
            )
        finally:
            await admin.close()
            await service.close()
    finally:
        status.done()
        await dep.stop()
        for text in report.unexpected_exits:
            checks.add("exited", text)
        report.findings = checks.lines()
        report.passed = not report.findings and bool(report.servers_acknowledged)
        report.process_restarts = dep.process_starts()
        report.total_s = round(time.monotonic() - began, 1)
        if report.passed and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
            report.logs = ""
        else:
            print(f"chaos logs and store kept in {workdir}", file=sys.stderr, flush=True)
    return report


def fill(report: ChaosReport, load: chaos_load.Load, ledger: chaos_load.Ledger) -> None:
    """The load's numbers into the report."""
    report.requests = load.sent
    report.requests_by_kind = ledger.requests
    report.creates_acknowledged = sum(
        ledger.requests.get(k, {}).get("acknowledged", 0) for k in ("create", "multi-create")
    )
    report.servers_acknowledged = len(ledger.created)
    report.deletes_acknowledged = len(ledger.deleted)
    report.api_failures = ledger.failures
