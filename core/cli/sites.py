"""`hvmesh site ...`: the sites (Nova's cells) joined to this core, their links and lag (admin)."""

from __future__ import annotations

import argparse
from typing import Any

from hvmesh.core.cli import output
from hvmesh.core.cli.connect import call

SITE_COLUMNS = ["name", "availability_zones", "link", "lag", "last_heard_s", "servers", "queued"]


def cmd_site_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "sites", "list", {})["sites"], args.format, SITE_COLUMNS)


def cmd_site_delete(args: argparse.Namespace) -> None:
    for name in args.site:
        call(args, "sites", "delete", {"name": name})


def add_parsers(sub: Any, leaf: Any) -> None:
    """The site command group."""
    st = sub.add_parser("site", help="sites joined to this core (admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(st, "list", cmd_site_list, "list sites: zones, link state, the view's lag, servers")
    leaf(st, "delete", cmd_site_delete, "forget sites (the sites keep their records)").add_argument(
        "site", nargs="+", help="site name (several may be given)"
    )
