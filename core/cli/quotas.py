"""`hvmesh quota show|set`, `hvmesh limits show` and `hvmesh usage show`: quotas, limits and usage."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hvmesh.core.cli import output
from hvmesh.core.cli.connect import call
from hvmesh.core.cli.errors import CliError

# `hvmesh quota set` option -> quota name.
LIMIT_OPTIONS = {
    "instances": "instances",
    "cores": "cores",
    "ram": "ram",
    "server_groups": "server_groups",
    "server_group_members": "server_group_members",
    "key_pairs": "key_pairs",
    "properties": "metadata_items",
}


def cmd_quota_show(args: argparse.Namespace) -> None:
    if args.default:
        reply = call(args, "quotas", "defaults", {})
    else:
        body = {"project": args.project} if args.project else {}
        reply = call(args, "quotas", "show", body)
    output.emit(reply["quota_set"], args.format)


def cmd_quota_set(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"project": args.project}
    for option, name in LIMIT_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            body[name] = value
    resources: dict[str, int] = {}
    for item in args.resource or []:
        name, sep, value = item.partition("=")
        try:
            resources[name] = int(value)
        except ValueError:
            raise CliError(f"--resource: {item!r} is not CLASS=N") from None
        if not sep:
            raise CliError(f"--resource: {item!r} is not CLASS=N")
    if resources:
        body["resources"] = resources
    output.emit(call(args, "quotas", "set", body)["quota_set"], args.format)


def cmd_quota_delete(args: argparse.Namespace) -> None:
    """`quota delete PROJECT`: its limits are the defaults again (admin)."""
    output.emit(call(args, "quotas", "delete", {"project": args.project})["quota_set"], args.format)


def cmd_limits_show(args: argparse.Namespace) -> None:
    body = {"project": args.project} if args.project else {}
    limits = call(args, "limits", "show", body)["limits"]
    if args.rate and not args.absolute:
        output.emit(limits["rate"], args.format, ["verb", "uri", "value", "remaining", "unit"])
        return
    rows = [{"name": k, "value": v} for k, v in limits["absolute"].items()]
    for rc, held in limits["resources"].items():
        rows.append({"name": f"maxTotal{rc}", "value": held["limit"]})
        rows.append({"name": f"total{rc}Used", "value": held["in_use"]})
    output.emit(rows, args.format, ["name", "value"])


def cmd_usage_show(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    for name in ("project", "start", "end"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    usage = call(args, "usage", "show", body)["tenant_usage"]
    if output.for_people(args.format) and args.format == "table":
        print(f"Usage from {usage['start'][:10]} to {usage['stop'][:10]} on project "
              f"{usage['tenant_id']}:")  # fmt: skip
        sys.stdout.flush()
    record = {
        "project": usage["tenant_id"],
        "servers": len(usage["server_usages"]),
        "ram_mb_hours": round(usage["total_memory_mb_usage"], 2),
        "cpu_hours": round(usage["total_vcpus_usage"], 2),
        "disk_gb_hours": round(usage["total_local_gb_usage"], 2),
    }
    output.emit(record, args.format)


def add_parsers(sub: Any, leaf: Any) -> None:
    """The quota, limits and usage command groups."""
    qu = sub.add_parser("quota", help="quotas").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(qu, "show", cmd_quota_show, "show a project's quotas (default: your own)")
    p.add_argument("project", nargs="?", help="project (NATS account; admin only for others)")
    p.add_argument("--default", action="store_true", help="the defaults every project starts with")
    p = leaf(qu, "set", cmd_quota_set, "set a project's quotas (admin); -1 is unlimited")
    p.add_argument("project", help="project (NATS account)")
    for option in LIMIT_OPTIONS:
        flag = "--" + option.replace("_", "-")
        p.add_argument(flag, dest=option, type=int, metavar="N")
    p.add_argument(
        "--resource", action="append", metavar="CLASS=N", help="a resource class's limit"
    )
    p = leaf(qu, "delete", cmd_quota_delete, "revert a project's quotas to the defaults (admin)")
    p.add_argument("project", help="project (NATS account)")
    li = sub.add_parser("limits", help="limits").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(li, "show", cmd_limits_show, "show absolute limits and what is used of them")
    p.add_argument("--absolute", action="store_true", help="absolute limits (the default)")
    p.add_argument("--rate", action="store_true", help="rate limits (hvmesh has none)")
    p.add_argument("--project", help="project (admin only for others)")
    us = sub.add_parser("usage", help="usage").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(us, "show", cmd_usage_show, "show a project's usage over a window")
    p.add_argument("--project", help="project (default: your own; admin only for others)")
    p.add_argument("--start", help="start, ISO 8601 (default: four weeks ago)")
    p.add_argument("--end", help="end, ISO 8601 (default: now)")
