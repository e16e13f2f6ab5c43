"""`hvmesh inventory query|report`: read-only SQL over the inventory index (admin)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hvmesh.core.cli import output
from hvmesh.core.cli.connect import call


def _emit_result(result: dict[str, Any], fmt: str) -> None:
    if not output.for_people(fmt):
        output.emit(result, fmt)
        return
    columns = result["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in result["rows"]]
    output.emit(rows, fmt, [(c, c) for c in columns])  # headed as the SQL names them
    if result.get("truncated"):
        print(f"(first {len(result['rows'])} rows only)", file=sys.stderr)


def cmd_inventory_query(args: argparse.Namespace) -> None:
    body = {"sql": args.sql, "params": args.param or []}
    _emit_result(call(args, "inventory", "query", body)["query"], args.format)


def cmd_inventory_report(args: argparse.Namespace) -> None:
    _emit_result(call(args, "inventory", "report", {"name": args.name})["report"], args.format)


def add_parsers(sub: Any, leaf: Any) -> None:
    """The inventory command group."""
    inv = sub.add_parser("inventory", help="SQL over the inventory index (admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(inv, "query", cmd_inventory_query, "read-only SQL over hosts, allocations, servers")
    p.add_argument("sql", help="one SELECT statement; ? marks take --param values")
    p.add_argument("--param", action="append", help="a value for the next ? mark")
    p = leaf(inv, "report", cmd_inventory_report, "a ready-made report")
    p.add_argument("name", choices=["capacity", "consumers"])
