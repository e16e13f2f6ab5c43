"""`hvmesh aggregate ...`: the host aggregate commands of the CLI (admin)."""

from __future__ import annotations

import argparse
from typing import Any

from hvmesh.core.cli import output
from hvmesh.core.cli.connect import call
from hvmesh.core.cli.errors import CliError
from hvmesh.core.cli.resources import delete_each, parse_properties, ref

AGGREGATE_COLUMNS = ["id", "name", "metadata", "hosts"]


def cmd_aggregate_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "metadata": parse_properties(args.property, "--property"),
    }
    if args.zone:
        body["availability_zone"] = args.zone
    output.emit(call(args, "aggregates", "create", body)["aggregate"], args.format)


def cmd_aggregate_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "aggregates", "list", {})["aggregates"], args.format, AGGREGATE_COLUMNS)


def cmd_aggregate_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "aggregates", "get", ref(args.aggregate))["aggregate"], args.format)


def cmd_aggregate_delete(args: argparse.Namespace) -> None:
    delete_each(args, "aggregates", args.aggregate, "aggregates")


def cmd_aggregate_add_host(args: argparse.Namespace) -> None:
    body = {"id": args.aggregate, "host": args.host}
    output.emit(call(args, "aggregates", "add_host", body)["aggregate"], args.format)


def cmd_aggregate_remove_host(args: argparse.Namespace) -> None:
    body = {"id": args.aggregate, "host": args.host}
    output.emit(call(args, "aggregates", "remove_host", body)["aggregate"], args.format)


def cmd_aggregate_set(args: argparse.Namespace) -> None:
    metadata: dict[str, Any] = dict(parse_properties(args.property, "--property"))
    metadata.update({key: None for key in args.unset or []})
    if not metadata:
        raise CliError("give --property KEY=VALUE or --unset KEY")
    body = {"id": args.aggregate, "metadata": metadata}
    output.emit(call(args, "aggregates", "set_metadata", body)["aggregate"], args.format)


def add_parsers(sub: Any, leaf: Any) -> None:
    """The aggregate command group."""
    ag = sub.add_parser("aggregate", help="host aggregates (admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(ag, "create", cmd_aggregate_create, "create a host aggregate")
    p.add_argument("name")
    p.add_argument("--zone", help="make it an availability zone")
    p.add_argument("--property", action="append", metavar="KEY=VALUE", help="metadata")
    leaf(ag, "list", cmd_aggregate_list, "list aggregates")
    leaf(ag, "show", cmd_aggregate_show, "show an aggregate").add_argument(
        "aggregate", help="id or name"
    )
    leaf(ag, "delete", cmd_aggregate_delete, "delete empty aggregates").add_argument(
        "aggregate", nargs="+", help="id or name (several may be given)"
    )
    for name, func, what in (
        ("add-host", cmd_aggregate_add_host, "add a host"),
        ("remove-host", cmd_aggregate_remove_host, "remove a host"),
    ):
        p = leaf(ag, name, func, what)
        p.add_argument("aggregate", help="id or name")
        p.add_argument("host")
    p = leaf(ag, "set", cmd_aggregate_set, "set or unset metadata")
    p.add_argument("aggregate", help="id or name")
    p.add_argument("--property", action="append", metavar="KEY=VALUE")
    p.add_argument("--unset", action="append", metavar="KEY")
