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


#: Tries of a request that is safe to repeat, while the bus does not answer (a NATS node
#: lost, leaders moving): the pause that follows is seconds, the tries span more than that.
REPEATS = 4
REPEAT_PAUSE = 1.0


async def api_repeatable(
    args: argparse.Namespace, subject: str, body: dict[str, Any], version: str
) -> Any:
    """A request whose body makes repeating it harmless (a create's client_token): asked
    again, on a new connection, when no answer came, up to REPEATS times."""
    from hvmesh.core.bus.microversion import HEADER
    from hvmesh.core.protocol import errors

    for attempt in range(REPEATS):
        try:
            nc = await connect_cli(args)
        except CliError:
            if attempt == REPEATS - 1:
                raise
        else:
            try:
                return await bus.call(nc, subject, body, args.timeout, {HEADER: version})
            except errors.ServiceUnavailable:
                if attempt == REPEATS - 1:
                    raise
            finally:
                await nc.close()
        await asyncio.sleep(REPEAT_PAUSE * (attempt + 1))  # backing off before the next try
    raise AssertionError("unreachable")


def call_repeatable(
    args: argparse.Namespace, resource: str, verb: str, body: dict[str, Any], version: str
) -> Any:
    return launcher.run(api_repeatable(args, subjects.api(resource, verb), body, version))
