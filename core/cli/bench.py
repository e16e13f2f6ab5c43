"""`hvmesh bench scheduler`: the scheduler benchmark from the CLI."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.errors import CliError

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.ops import bench as ops_bench
    from hvmesh.core.ops import launcher
else:
    launcher = lazy.module("hvmesh.core.ops.launcher")
    ops_bench = lazy.module("hvmesh.core.ops.bench")


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
