"""Walking a paged list from the CLI: page after page, following each reply's next marker."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from hvmesh.core.cli import lazy
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError
from hvmesh.core.protocol import subjects

if TYPE_CHECKING:
    from hvmesh.core.bus import micro as bus
    from hvmesh.core.ops import launcher
else:
    bus = lazy.module("hvmesh.core.bus.micro")
    launcher = lazy.module("hvmesh.core.ops.launcher")


def next_marker(reply: dict[str, Any], key: str) -> str | None:
    """The marker of the page after this one (None: this was the last)."""
    for link in reply.get(f"{key}_links") or []:
        if link.get("rel") == "next":
            marker = link.get("marker")
            return str(marker) if marker is not None else None
    return None


async def walk(
    args: argparse.Namespace, resource: str, verb: str, body: dict[str, Any], key: str
) -> list[dict[str, Any]]:
    """Every record of a list, asking page after page on one connection; from the
    second page on, how many came so far is shown on stderr."""
    nc = await connect_cli(args)
    subject = subjects.api(resource, verb)
    rows: list[dict[str, Any]] = []
    marker = body.get("marker")
    try:
        while True:
            asked = {**body, "marker": marker} if marker is not None else body
            reply = await bus.call(nc, subject, asked, timeout=args.timeout)
            rows.extend(reply[key])
            following = next_marker(reply, key)
            if following is None:
                return rows
            if following == marker:
                raise CliError(f"{resource} list: the next page starts at {marker} again")
            print(f"  {len(rows)} {key} so far...", file=sys.stderr, flush=True)
            marker = following
    finally:
        await nc.close()


def list_all(
    args: argparse.Namespace, resource: str, verb: str, body: dict[str, Any], key: str
) -> list[dict[str, Any]]:
    """`walk`, from synchronous code."""
    return launcher.run(walk(args, resource, verb, body, key))
