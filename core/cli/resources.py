"""What the resource commands share: record references, KEY=VALUE options, deleting several."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError
from hvmesh.core.protocol import errors, subjects

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.bus import micro as bus
    from hvmesh.core.ops import launcher
else:
    bus = lazy.module("hvmesh.core.bus.micro")
    launcher = lazy.module("hvmesh.core.ops.launcher")


def parse_properties(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def ref(value: str) -> dict[str, str]:
    """A record reference: the API accepts an id or a name in the same field."""
    return {"id": value}


async def delete_all(
    args: argparse.Namespace,
    subject: str,
    refs: list[str],
    body: Callable[[str], dict[str, Any]] = ref,
) -> tuple[list[Any], int]:
    """Send one delete per reference, in order: the replies, and how many failed.

    With one reference its error is raised. With several, each failure is one line on
    stderr (`error (CODE): message`) and the others are still deleted.
    """
    nc = await connect_cli(args)
    replies: list[Any] = []
    try:
        for r in refs:
            try:
                replies.append(await bus.call(nc, subject, body(r), timeout=args.timeout))
            except errors.HvmeshError as exc:
                if len(refs) == 1:
                    raise
                print(f"error ({exc.code}): {exc.message}", file=sys.stderr, flush=True)
    finally:
        await nc.close()
    return replies, len(refs) - len(replies)


def delete_each(
    args: argparse.Namespace,
    resource: str,
    refs: list[str],
    noun: str,
    body: Callable[[str], dict[str, Any]] = ref,
) -> None:
    """`hvmesh X delete A [B ...]`: delete each, show what went, fail if any did not."""
    subject = subjects.api(resource, "delete")
    replies, failed = launcher.run(delete_all(args, subject, refs, body))
    if len(refs) == 1:
        output.emit(replies[0], args.format)
    elif replies or args.format == "json":
        output.emit(replies, args.format, ["deleted"])
    if failed:
        raise CliError(f"Failed to delete {failed} of {len(refs)} {noun}")
