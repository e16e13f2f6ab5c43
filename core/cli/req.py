"""`hvmesh req SUBJECT [BODY]`: a raw JSON request, as `nats req` sends it."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.connect import api
from hvmesh.core.cli.errors import CliError

# Imported when first used: parsing the command line (and --help) needs none of it.
if TYPE_CHECKING:
    from hvmesh.core.ops import launcher
else:
    launcher = lazy.module("hvmesh.core.ops.launcher")


def cmd_req(args: argparse.Namespace) -> None:
    try:
        body = json.loads(args.body) if args.body else {}
    except ValueError as exc:
        raise CliError(f"body is not JSON: {exc}") from None
    output.emit(launcher.run(api(args, args.subject, body)), "json")


def add_parsers(sub: Any, leaf: Any) -> None:
    """The req command."""
    p = leaf(sub, "req", cmd_req, "send a raw JSON request, as `nats req` does")
    p.add_argument("subject", help="e.g. hvmesh.api.servers.list")
    p.add_argument("body", nargs="?", default="{}", help="JSON body")
