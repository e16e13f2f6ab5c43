"""The `hvmesh` command: run the services, and talk to a running deployment.

Connection: --url/--user/--password, else --context NAME or $HVMESH_CONTEXT (a NATS CLI
context), else the context `nats context select` chose, else the "hvmesh-admin" context
that `hvmesh up` writes, else [nats] of the config file. Output: python-openstackclient's
`-f table|json|yaml|value|csv` and `-c COLUMN`. Errors: one line; `--debug` for the details.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hvmesh.core import config, log
from hvmesh.core.cli import (
    aggregates,
    api_schema,
    bench,
    completion,
    compute,
    consoles,
    flavors,
    images,
    inventory,
    lazy,
    manage,
    network,
    output,
    plugins,
    policy,
    quotas,
    req,
    server_actions,
    servers,
    services,
    sites,
)
from hvmesh.core.cli import args as cli_args
from hvmesh.core.cli.errors import CliError
from hvmesh.core.protocol import errors
from hvmesh.plugins.drivers import DriverUnavailable

# Imported when first used: main() reads it only when a command fails.
if TYPE_CHECKING:
    from hvmesh.core.ops import natsserver
else:
    natsserver = lazy.module("hvmesh.core.ops.natsserver")


def add_common_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Connection and output options, accepted before and after the command words.

    The copy on each command defaults to SUPPRESS so it only overrides what was given
    before the command when it is given itself.
    """

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("connection and output")
    g.add_argument("--config", default=d(None), help="INI config file (default: $HVMESH_CONFIG)")
    g.add_argument(
        "--context",
        default=d(None),
        help="NATS CLI context to connect with (default: hvmesh-admin)",
    )
    g.add_argument("--url", default=d(None), help="NATS URL, overriding the context")
    g.add_argument("--user", default=d(None), help="NATS user (with --url)")
    g.add_argument("--password", default=d(None), help="NATS password (with --url)")
    g.add_argument("--timeout", type=float, default=d(10.0), help="seconds to wait for a reply")
    cli_args.add_output_options(g, d)
    g.add_argument("--debug", action="store_true", default=d(False), help="show error details")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, suppress=True)
    parser = argparse.ArgumentParser(
        prog="hvmesh", description="hvmesh: a compute control plane on NATS."
    )
    add_common_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(parent: Any, name: str, func: Callable[[argparse.Namespace], None], help: str) -> Any:
        p = parent.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func, command_parser=p)
        return p

    services.add_parsers(sub, leaf)  # up, api, conductor, ..., config
    api_schema.add_parsers(sub, leaf)  # api schema
    flavors.add_parsers(sub, leaf)
    images.add_parsers(sub, leaf)
    network.add_parsers(sub, leaf)  # network, port, keypair
    plugins.add_parsers(sub, leaf)  # plugins, driver
    completion.add_parsers(sub, leaf, parser)

    sv = sub.add_parser("server", help="servers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    servers.add_parsers(sv, leaf)
    server_actions.add_parsers(sub, sv, leaf)
    compute.add_group_parsers(sv, "group", leaf)
    compute.add_migration_parsers(sv, leaf)
    compute.add_parsers(sub, leaf)  # hypervisor, availability zone, compute service, ...

    aggregates.add_parsers(sub, leaf)
    sites.add_parsers(sub, leaf)
    inventory.add_parsers(sub, leaf)
    manage.add_parsers(sub, leaf)
    bench.add_parsers(sub, leaf)
    quotas.add_parsers(sub, leaf)  # quota, limits, usage
    policy.add_parsers(sub, leaf)
    req.add_parsers(sub, leaf)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = consoles.with_default_attach(sys.argv[1:] if argv is None else argv)
    args = cli_args.parse(build_parser(), argv)
    log.setup("debug" if args.debug else "error")
    output.configure(args)
    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return output.stdout_closed()
    except KeyboardInterrupt:
        return 130
    except (
        CliError,
        errors.HvmeshError,
        config.ConfigError,
        natsserver.NatsServerError,
        DriverUnavailable,
        ValueError,
        OSError,
    ) as exc:
        if args.debug:
            traceback.print_exc()
        message = getattr(exc, "message", None) or str(exc)
        code = getattr(exc, "code", None)
        prefix = f"error ({code})" if isinstance(exc, errors.HvmeshError) else "error"
        print(f"{prefix}: {message}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"error: {type(exc).__name__}: {exc} (--debug for details)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
