"""Reaching a deployment from the CLI: its NATS settings, one connection, one API request."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core import config
from hvmesh.core.bus import contexts
from hvmesh.core.cli import lazy
from hvmesh.core.cli.errors import CliError
from hvmesh.core.protocol import subjects

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    import asyncio

    from hvmesh.core.bus import connection
    from hvmesh.core.bus import micro as bus
    from hvmesh.core.ops import launcher
else:
    asyncio = lazy.module("asyncio")
    bus = lazy.module("hvmesh.core.bus.micro")
    connection = lazy.module("hvmesh.core.bus.connection")
    launcher = lazy.module("hvmesh.core.ops.launcher")


def nats_settings(args: argparse.Namespace) -> config.NatsSection:
    cfg = config.load(args.config).nats
    if args.url:
        return msgspec.structs.replace(
            cfg, url=args.url, user=args.user or "", password=args.password or ""
        )
    return contexts.settings(args.context or os.environ.get("HVMESH_CONTEXT"), cfg)


async def connect_cli(args: argparse.Namespace) -> Any:
    """Connect once, giving up after --timeout instead of retrying forever."""
    settings = nats_settings(args)
    try:
        return await asyncio.wait_for(
            connection.connect(settings, "hvmesh-cli", once=True, connect_timeout=args.timeout),
            timeout=args.timeout,
        )
    except TimeoutError:
        raise CliError(
            f"cannot connect to NATS at {settings.url}: no answer within {args.timeout:g}s"
        ) from None
    except Exception as exc:
        detail = str(exc) or type(exc).__name__
        raise CliError(f"cannot connect to NATS at {settings.url}: {detail}") from None


async def api(args: argparse.Namespace, subject: str, body: dict[str, Any]) -> Any:
    nc = await connect_cli(args)
    try:
        return await bus.call(nc, subject, body, timeout=args.timeout)
    finally:
        await nc.close()


def call(args: argparse.Namespace, resource: str, verb: str, body: dict[str, Any]) -> Any:
    return launcher.run(api(args, subjects.api(resource, verb), body))
