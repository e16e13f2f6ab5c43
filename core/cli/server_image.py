"""`hvmesh server image create SERVER`: a snapshot of a server as a new image (openstack's spelling).

As `openstack server image create [--name NAME] [--property K=V] [--wait] SERVER`: the
image is named after the server unless --name says otherwise, and the command prints
the new image; with --wait it follows the snapshot until the image is active, and fails
with the server's fault when the snapshot failed (its image is deleted then).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError
from hvmesh.core.cli.resources import parse_properties
from hvmesh.core.protocol import errors, subjects

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    import asyncio

    from hvmesh.core.bus import micro as bus
    from hvmesh.core.ops import launcher
else:
    asyncio = lazy.module("asyncio")
    bus = lazy.module("hvmesh.core.bus.micro")
    launcher = lazy.module("hvmesh.core.ops.launcher")


def cmd_server_image_create(args: argparse.Namespace) -> None:
    metadata = parse_properties(args.property, "--property")
    output.emit(launcher.run(_create(args, metadata)), args.format)


async def _create(args: argparse.Namespace, metadata: dict[str, str]) -> Any:
    nc = await connect_cli(args)
    try:
        server = (await bus.call(nc, subjects.api("servers", "get"), {"id": args.server}))["server"]
        body = {
            "id": server["id"],
            "action": "create-image",
            "name": args.name or server["name"],
            "metadata": metadata,
        }
        reply = await bus.call(nc, subjects.api("servers", "action"), body)
        image_id = reply["image_id"]
        if args.wait:
            return await _wait(nc, args, server["id"], image_id)
        return (await bus.call(nc, subjects.api("images", "get"), {"id": image_id}))["image"]
    finally:
        await nc.close()


async def _wait(nc: Any, args: argparse.Namespace, server_id: str, image_id: str) -> Any:
    """Poll the image until it is active; gone means the snapshot failed."""
    started = time.monotonic()
    last = None
    while True:
        try:
            image = (await bus.call(nc, subjects.api("images", "get"), {"id": image_id}))["image"]
        except errors.NotFound:
            server = (await bus.call(nc, subjects.api("servers", "get"), {"id": server_id}))[
                "server"
            ]
            fault = (server.get("fault") or {}).get("message", "no fault recorded")
            raise CliError(f"snapshot of server {server_id} failed: {fault}") from None
        if image["status"] != last:
            elapsed = time.monotonic() - started
            print(f"  {elapsed:6.1f}s  image {image['status']}", file=sys.stderr, flush=True)
            last = image["status"]
        if image["status"] == "active":
            return image
        if time.monotonic() - started > args.wait_timeout:
            raise CliError(f"image {image_id} is still {last} after {args.wait_timeout:g}s")
        await asyncio.sleep(0.25)  # polling interval between status reads


def add_parsers(sv: Any, leaf: Any) -> None:
    """`server image create` under `server` (`sv`)."""
    im = sv.add_parser("image", help="images of servers (snapshots)").add_subparsers(
        dest="image_action", required=True, metavar="ACTION"
    )
    p = leaf(im, "create", cmd_server_image_create, "snapshot a server's disk as a new image")
    p.add_argument("server", help="id or name")
    p.add_argument("--name", help="the image's name (default: the server's)")
    p.add_argument(
        "--property", action="append", metavar="KEY=VALUE", help="an image property (repeatable)"
    )
    p.add_argument("--wait", action="store_true", help="follow it until the image is active")
    p.add_argument("--wait-timeout", type=float, default=300.0)
