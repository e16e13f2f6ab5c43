"""`hvmesh bench scheduler|boot|idle|list|console|chaos`: the benchmarks and the chaos run from the CLI."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.args import add_cluster_option, check_cluster
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.ops import bench as ops_bench
    from hvmesh.core.ops import bench_boot, bench_console, bench_idle, bench_list, launcher
    from hvmesh.core.ops import chaos as ops_chaos
else:
    launcher = lazy.module("hvmesh.core.ops.launcher")
    ops_bench = lazy.module("hvmesh.core.ops.bench")
    bench_console = lazy.module("hvmesh.core.ops.bench_console")
    bench_boot = lazy.module("hvmesh.core.ops.bench_boot")
    bench_idle = lazy.module("hvmesh.core.ops.bench_idle")
    bench_list = lazy.module("hvmesh.core.ops.bench_list")
    ops_chaos = lazy.module("hvmesh.core.ops.chaos")


def cmd_bench_scheduler(args: argparse.Namespace) -> None:
    for flag in ("hosts", "requests", "schedulers", "concurrency"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag} must be at least 1")
    result = launcher.run(
        ops_bench.run(
            hosts=args.hosts,
            requests=args.requests,
            schedulers=args.schedulers,
            concurrency=args.concurrency,
            url=args.url,
            user=args.user or "",
            password=args.password or "",
            quiet=not output.for_people(args.format),
        )
    )
    data = msgspec.to_builtins(result)
    if output.for_people(args.format):
        data.pop("audit_problems")
    output.emit(data, args.format)
    if result.audit != "clean":
        raise CliError(f"audit failed: {'; '.join(result.audit_problems[:3])}")


def cmd_bench_chaos(args: argparse.Namespace) -> None:
    if args.url or args.context:
        raise CliError("hvmesh bench chaos runs its own nats-server: no --url or --context")
    if args.duration < 30:
        raise CliError("--duration must be at least 30 seconds")
    if args.hosts < 2:
        raise CliError("--hosts must be at least 2")
    if args.rate <= 0:
        raise CliError("--rate must be more than 0")
    if args.settle_limit <= 0:
        raise CliError("--settle-limit must be more than 0")
    if not 0 <= args.fail_rate < 1:
        raise CliError("--fail-rate must be from 0 to less than 1")
    check_cluster(args.cluster)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    report = launcher.run(
        ops_chaos.run(
            duration=args.duration,
            seed=seed,
            hosts=args.hosts,
            rate=args.rate,
            fail_rate=args.fail_rate,
            settle_limit=args.settle_limit,
            workdir=Path(args.workdir).expanduser() if args.workdir else None,
            quiet=not output.for_people(args.format),
            cluster=args.cluster,
        )
    )
    output.emit(msgspec.to_builtins(report), args.format)
    if not report.passed:
        first = report.findings[0] if report.findings else "no server was acknowledged"
        raise CliError(
            f"chaos: {len(report.findings)} findings (seed {seed}, logs in {report.logs}): {first}"
        )


def cmd_bench_boot(args: argparse.Namespace) -> None:
    if args.url or args.context:
        raise CliError("hvmesh bench boot runs its own deployment: no --url or --context")
    for flag in ("hosts", "servers", "concurrency", "decisions"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag} must be at least 1")
    result = launcher.run(
        bench_boot.run(
            hosts=args.hosts,
            servers=args.servers,
            concurrency=args.concurrency,
            decisions=args.decisions,
            quiet=not output.for_people(args.format),
        )
    )
    data = msgspec.to_builtins(result)
    if output.for_people(args.format):  # a table cell each: "p50 / p99 ms"
        data["stages"] = ", ".join(
            f"{name} {t['p50_ms']:g}/{t['p99_ms']:g}" for name, t in data["stages"].items()
        )
        data["writes_by_stream"] = ", ".join(
            f"{name} {n:g}" for name, n in data["writes_by_stream"].items()
        )
    output.emit(data, args.format)
    if result.errors:
        raise CliError(f"{result.errors} of {result.servers} boots did not reach ACTIVE")


def cmd_bench_idle(args: argparse.Namespace) -> None:
    if args.url or args.context:
        raise CliError("hvmesh bench idle runs its own deployment: no --url or --context")
    if args.hosts < 1:
        raise CliError("--hosts must be at least 1")
    if args.seconds <= 0:
        raise CliError("--seconds must be more than 0")
    quiet = not output.for_people(args.format)
    result = bench_idle.run(args.hosts, args.seconds, quiet=quiet)
    output.emit(msgspec.to_builtins(result), args.format)


def cmd_bench_list(args: argparse.Namespace) -> None:
    if args.url or args.context:
        raise CliError("hvmesh bench list runs its own deployment: no --url or --context")
    for flag in ("servers", "hosts", "page"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag} must be at least 1")
    quiet = not output.for_people(args.format)
    result = launcher.run(bench_list.run(args.servers, args.hosts, args.page, quiet=quiet))
    data = msgspec.to_builtins(result)
    if output.for_people(args.format):  # a table cell each
        for key in ("servers_list", "hypervisors_list"):
            t = data[key]
            data[key] = (
                f"{t['records']} in {t['pages']} pages: p50 {t['p50_ms']:g} ms, "
                f"p99 {t['p99_ms']:g} ms, first {t['first_page_ms']:g} ms"
            )
    output.emit(data, args.format)


async def _bench_vnc(args: argparse.Namespace) -> Any:
    nc = await connect_cli(args)
    try:
        return await bench_console.vnc(nc, args.vnc, args.seconds, args.direct)
    finally:
        await nc.close()


def cmd_bench_console(args: argparse.Namespace) -> None:
    if args.vnc:
        if args.seconds <= 0:
            raise CliError("--seconds must be more than 0")
        output.emit(msgspec.to_builtins(launcher.run(_bench_vnc(args))), args.format)
        return
    if args.direct:
        raise CliError("--direct goes with --vnc")
    if args.url or args.context:
        raise CliError(
            "hvmesh bench console runs its own nats-server: no --url or --context "
            "(except with --vnc, against a running deployment)"
        )
    if args.keystrokes < 1 or args.seconds <= 0:
        raise CliError("--keystrokes must be at least 1 and --seconds more than 0")
    quiet = not output.for_people(args.format)
    result = launcher.run(bench_console.run(args.keystrokes, args.seconds, quiet=quiet))
    output.emit(msgspec.to_builtins(result), args.format)


def add_parsers(sub: Any, leaf: Any) -> None:
    """The bench command group."""
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(
        bench,
        "scheduler",
        cmd_bench_scheduler,
        "placement decisions/s and latency through real scheduler processes, claims included",
    )
    p.add_argument("--hosts", type=int, default=10000, help="simulated hosts")
    p.add_argument("--requests", type=int, default=5000, help="placements to make")
    p.add_argument("--schedulers", type=int, default=1, help="scheduler processes")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p = leaf(
        bench,
        "boot",
        cmd_bench_boot,
        "boots/s API to ACTIVE through every service (fake driver, no spawn time), each "
        "stage's latency, deletes/s, and the scheduler's decisions/s in the same run",
    )
    p.add_argument("--hosts", type=int, default=1000, help="simulated hosts, in one agent")
    p.add_argument("--servers", type=int, default=2000, help="servers to boot, then delete")
    p.add_argument("--concurrency", type=int, default=50, help="requests in flight")
    p.add_argument(
        "--decisions", type=int, default=2000, help="scheduler placements measured afterwards"
    )
    p = leaf(
        bench,
        "idle",
        cmd_bench_idle,
        "what N simulated hosts cost idle: hvmesh up's start-up, then CPU and memory of "
        "hvmesh and nats-server over S seconds",
    )
    p.add_argument("--hosts", type=int, default=1000, help="simulated hosts")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of idling measured")
    p = leaf(
        bench,
        "list",
        cmd_bench_list,
        "a page of servers.list and hypervisors.list over N servers and H hosts, walked "
        "page by page through a real API process",
    )
    p.add_argument("--servers", type=int, default=100000, help="server records")
    p.add_argument("--hosts", type=int, default=10000, help="host records")
    p.add_argument("--page", type=int, default=1000, help="records a page asks for")
    p = leaf(
        bench,
        "console",
        cmd_bench_console,
        "a keystroke's round trip and bulk throughput through the console proxy, NATS and an agent",
    )
    p.add_argument("--keystrokes", type=int, default=2000, help="keystrokes timed one by one")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of bulk output")
    p.add_argument(
        "--vnc",
        metavar="SERVER",
        help="measure SERVER's VNC console in the running deployment instead: whole screens "
        "per second through the proxy",
    )
    p.add_argument(
        "--direct", metavar="HOST:PORT", help="with --vnc: its VNC server, measured straight too"
    )
    p = leaf(
        bench,
        "chaos",
        cmd_bench_chaos,
        "creates and actions on separate processes while a seeded schedule kill -9's each "
        "of them and nats-server; then checks nothing was lost, stuck or leaked",
    )
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load and kills")
    p.add_argument("--seed", type=int, help="the schedule's seed (default: a random one, printed)")
    p.add_argument("--hosts", type=int, default=12, help="simulated hosts, 4 per agent process")
    p.add_argument("--rate", type=float, default=4.0, help="API requests per second")
    p.add_argument(
        "--fail-rate", type=float, default=0.05, help="fraction of simulated spawns that fail"
    )
    p.add_argument(
        "--settle-limit",
        type=float,
        default=150.0,
        help="seconds the servers may take to settle after the load, and to be deleted",
    )
    p.add_argument(
        "--workdir",
        help="keep the store and the processes' logs here (default: a temporary "
        "directory, kept only when a check fails)",
    )
    add_cluster_option(p, "the nats-server killed is one node")
