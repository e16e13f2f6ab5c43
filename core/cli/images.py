"""`hvmesh image create|list|show|set|unset|delete`: the image commands of the CLI, uploads included."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.connect import call, connect_cli
from hvmesh.core.cli.errors import CliError
from hvmesh.core.cli.resources import delete_each, parse_properties, ref
from hvmesh.core.protocol import subjects

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.bus import micro as bus
    from hvmesh.core.cli import image_upload
    from hvmesh.core.ops import launcher
else:
    bus = lazy.module("hvmesh.core.bus.micro")
    image_upload = lazy.module("hvmesh.core.cli.image_upload")
    launcher = lazy.module("hvmesh.core.ops.launcher")

IMAGE_COLUMNS = ["id", "name", "disk_format", "status", "size", "visibility"]


def cmd_image_create(args: argparse.Namespace) -> None:
    path = Path(args.file).expanduser() if args.file else None
    if path is not None and not path.is_file():
        raise CliError(f"--file {args.file}: no such file")
    body = {
        "name": args.name,
        "disk_format": args.disk_format,
        "container_format": args.container_format,
        "properties": parse_properties(args.property, "--property"),
        "min_ram_mb": args.min_ram,
        "min_disk_gb": args.min_disk,
        "visibility": "private" if args.private else "public",
        "upload": path is not None,
    }

    async def create() -> Any:
        nc = await connect_cli(args)
        try:
            image = (
                await bus.call(nc, subjects.api("images", "create"), body, timeout=args.timeout)
            )["image"]
            if path is None:
                return image
            bar = image_upload.ProgressBar(f"uploading {path.name}")
            return await image_upload.upload(nc, image["id"], path, args.timeout, bar)
        finally:
            await nc.close()

    output.emit(launcher.run(create()), args.format)


def cmd_image_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "images", "list", {})["images"], args.format, IMAGE_COLUMNS)


def cmd_image_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "images", "get", ref(args.image))["image"], args.format)


def cmd_image_set(args: argparse.Namespace) -> None:
    """`image set`: name, visibility, minimums and properties (images.update)."""
    body: dict[str, Any] = {
        "id": args.image,
        "properties": parse_properties(args.property, "--property"),
    }
    for key, value in (
        ("name", args.name),
        ("min_ram_mb", args.min_ram),
        ("min_disk_gb", args.min_disk),
        ("visibility", "public" if args.public else "private" if args.private else None),
    ):
        if value is not None:
            body[key] = value
    output.emit(call(args, "images", "update", body)["image"], args.format)


def cmd_image_unset(args: argparse.Namespace) -> None:
    body = {"id": args.image, "properties": dict.fromkeys(args.property)}
    output.emit(call(args, "images", "update", body)["image"], args.format)


def cmd_image_delete(args: argparse.Namespace) -> None:
    delete_each(args, "images", args.image, "images")


def add_parsers(sub: Any, leaf: Any) -> None:
    """The image command group."""
    im = sub.add_parser("image", help="images").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(im, "create", cmd_image_create, "create an image, uploading its file")
    p.add_argument("name")
    p.add_argument("--file", help="the image's data (uploaded, sha256-checked)")
    p.add_argument(
        "--disk-format",
        default="qcow2",
        choices=["qcow2", "raw", "vmdk", "vhd", "vhdx", "iso", "ami", "ari", "aki"],
    )
    p.add_argument(
        "--container-format", default="bare", choices=["bare", "ovf", "ova", "aki", "ari", "ami"]
    )
    p.add_argument("--property", action="append", metavar="KEY=VALUE")
    p.add_argument("--min-ram", type=int, default=0, help="MB")
    p.add_argument("--min-disk", type=int, default=0, help="GB")
    p.add_argument("--private", action="store_true")
    leaf(im, "list", cmd_image_list, "list images")
    leaf(im, "show", cmd_image_show, "show an image").add_argument("image", help="id or name")
    p = leaf(im, "set", cmd_image_set, "change an image's name, visibility or properties")
    p.add_argument("image", help="id or name")
    p.add_argument("--name")
    p.add_argument("--property", action="append", metavar="KEY=VALUE")
    p.add_argument("--min-ram", type=int, help="MB")
    p.add_argument("--min-disk", type=int, help="GB")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--public", action="store_true", help="every project sees it (admin)")
    shown.add_argument("--private", action="store_true", help="only its project sees it")
    p = leaf(im, "unset", cmd_image_unset, "remove properties from an image")
    p.add_argument("image", help="id or name")
    p.add_argument("--property", action="append", required=True, metavar="KEY")
    leaf(im, "delete", cmd_image_delete, "delete images").add_argument(
        "image", nargs="+", help="id or name (several may be given)"
    )
