"""`hvmesh flavor create|list|show|delete`: the flavor commands of the CLI."""

from __future__ import annotations

import argparse
from typing import Any

from hvmesh.core.cli import output
from hvmesh.core.cli.connect import call
from hvmesh.core.cli.resources import delete_each, parse_properties, ref

FLAVOR_COLUMNS = ["id", "name", "vcpus", "ram_mb", "disk_gb", "is_public"]


def cmd_flavor_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "vcpus": args.vcpus,
        "ram_mb": args.ram,
        "disk_gb": args.disk,
        "extra_specs": parse_properties(args.property, "--property"),
        "is_public": not args.private,
    }
    if args.id:
        body["id"] = args.id
    output.emit(call(args, "flavors", "create", body)["flavor"], args.format)


def cmd_flavor_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "flavors", "list", {})["flavors"], args.format, FLAVOR_COLUMNS)


def cmd_flavor_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "flavors", "get", ref(args.flavor))["flavor"], args.format)


def cmd_flavor_set(args: argparse.Namespace) -> None:
    specs: dict[str, str | None] = dict(parse_properties(args.property, "--property"))
    body = {"id": args.flavor, "extra_specs": specs}
    output.emit(call(args, "flavors", "set_extra_specs", body)["flavor"], args.format)


def cmd_flavor_unset(args: argparse.Namespace) -> None:
    body = {"id": args.flavor, "extra_specs": dict.fromkeys(args.property)}
    output.emit(call(args, "flavors", "set_extra_specs", body)["flavor"], args.format)


def cmd_flavor_delete(args: argparse.Namespace) -> None:
    delete_each(args, "flavors", args.flavor, "flavors")


def add_parsers(sub: Any, leaf: Any) -> None:
    """The flavor command group."""
    fl = sub.add_parser("flavor", help="flavors").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(fl, "create", cmd_flavor_create, "create a flavor (admin)")
    p.add_argument("name")
    p.add_argument("--vcpus", type=int, required=True)
    p.add_argument("--ram", type=int, required=True, help="MB")
    p.add_argument("--disk", type=int, default=0, help="GB")
    p.add_argument("--id", help="flavor id (default: a new UUID)")
    p.add_argument("--property", action="append", metavar="KEY=VALUE", help="extra spec")
    p.add_argument("--private", action="store_true")
    leaf(fl, "list", cmd_flavor_list, "list flavors")
    leaf(fl, "show", cmd_flavor_show, "show a flavor").add_argument("flavor", help="id or name")
    p = leaf(fl, "set", cmd_flavor_set, "set a flavor's extra specs (admin)")
    p.add_argument("flavor", help="id or name")
    p.add_argument("--property", action="append", required=True, metavar="KEY=VALUE")
    p = leaf(fl, "unset", cmd_flavor_unset, "remove a flavor's extra specs (admin)")
    p.add_argument("flavor", help="id or name")
    p.add_argument("--property", action="append", required=True, metavar="KEY")
    leaf(fl, "delete", cmd_flavor_delete, "delete flavors (admin)").add_argument(
        "flavor", nargs="+", help="id or name (several may be given)"
    )
