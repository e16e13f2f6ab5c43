"""hvmesh's command line as python-openstackclient's: the output options, and errors in a command's own usage."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hvmesh.core.cli import output
from hvmesh.core.cli.errors import CliError


def add_output_options(group: Any, default: Callable[[Any], Any]) -> None:
    """`-f`, `-c`, `--max-width` and `--noindent`; `default(value)` gives each its default."""
    group.add_argument(
        "-f",
        "--format",
        choices=output.FORMATS,
        default=default("table"),
        help="output format (default: table)",
    )
    group.add_argument(
        "-c",
        "--column",
        action="append",
        metavar="COLUMN",
        default=default(None),
        help="show only this column, by header or field name (repeatable)",
    )
    group.add_argument(
        "--max-width",
        type=int,
        metavar="N",
        default=default(None),
        help="table: wrap columns to fit N characters; 0: no limit "
        "(default: the terminal's width when output goes to one)",
    )
    group.add_argument(
        "--noindent",
        action="store_true",
        default=default(False),
        help="json: no indentation",
    )


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; an unknown argument is reported with the usage of the command it follows.

    Each command's parser records itself as `command_parser` (see `build_parser`), so
    `hvmesh server list --bogus` prints `usage: hvmesh server list ...`, not hvmesh's.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = getattr(args, "command_parser", None) or parser
        target.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def add_cluster_option(parser: Any, what: str) -> None:
    """`--cluster [NODES]`: NATS as a cluster of 3 (the default) or 5 nodes; `what` says
    what else the option does."""
    parser.add_argument(
        "--cluster",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="NODES",
        help=f"run NATS as a cluster of 3 (or 5) nodes, every stream and bucket kept on "
        f"each; {what}",
    )


def check_cluster(nodes: int) -> None:
    """A CliError unless `nodes` is 0 (no cluster), 3 or 5."""
    if nodes and nodes not in (3, 5):
        raise CliError(f"--cluster must be 3 or 5 nodes, not {nodes}")
