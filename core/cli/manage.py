"""`hvmesh manage audit` (and `manage tasks`): operator maintenance straight on hvmesh's state."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core import config
from hvmesh.core.cli import lazy, manage_tasks, output
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.ops import agent_credentials, audit, launcher
    from hvmesh.core.state import store as state_store
else:
    agent_credentials = lazy.module("hvmesh.core.ops.agent_credentials")
    audit = lazy.module("hvmesh.core.ops.audit")
    launcher = lazy.module("hvmesh.core.ops.launcher")
    state_store = lazy.module("hvmesh.core.state.store")


def cmd_manage_audit(args: argparse.Namespace) -> None:
    store_class = state_store.Store  # read now: its module loads outside the try below
    cfg = config.load(args.config)

    async def run() -> list[Any]:
        nc = await connect_cli(args)
        try:
            try:
                store = await store_class(nc.jetstream()).open(create=False)
            except Exception as exc:
                raise CliError(
                    "manage audit reads hvmesh's buckets directly: connect as an operator of "
                    f"the HVMESH account ({type(exc).__name__})"
                ) from None
            return await audit.audit(store, heal=args.heal, nc=nc, cfg=cfg)
        finally:
            await nc.close()

    found = launcher.run(run())
    rows = [msgspec.to_builtins(f) for f in found]
    if rows or not output.for_people(args.format):
        columns = ["kind", "host", "server_id", "resource", "message", "healed"]
        output.emit(rows, args.format, columns)
        if args.heal and output.for_people(args.format):
            print(f"healed {sum(f.healed for f in found)} of {len(found)} finding(s)")
    else:
        print("audit: clean")
    unhealed = [f for f in found if not f.healed]
    if unhealed:
        raise CliError(
            f"{len(unhealed)} finding(s) left"
            + ("" if args.heal else "; --heal fixes all but overcommit and host_unreachable")
        )


def cmd_manage_agent_credentials(args: argparse.Namespace) -> None:
    conf_dir = Path(args.conf_dir).expanduser()
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()] if args.hosts else None
    try:
        issued = agent_credentials.issue(conf_dir, args.host, hosts)
    except (agent_credentials.CredentialError, OSError) as exc:
        raise CliError(str(exc)) from None
    shown = agent_credentials.view(issued, conf_dir)
    if not output.for_people(args.format):
        output.emit(shown, args.format)
        return
    print(f"agent {issued.name} ({', '.join(issued.hosts)}): NKEY user {issued.public_key}")
    print(f"seed (keep it secret): {issued.seed_file}")
    print(f"users file: {shown['users_file']}; apply it with: nats-server --signal reload")
    print("the agent's config:")
    print(shown["config"], end="")


def add_parsers(sub: Any, leaf: Any) -> None:
    """The manage command group."""
    manage = sub.add_parser("manage", help="operator maintenance").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(
        manage,
        "audit",
        cmd_manage_audit,
        "check every record against the others and the hypervisors: allocations, "
        "addresses and ports, stuck servers, orphan guests and image pins",
    )
    p.add_argument("--heal", action="store_true", help="fix what can be fixed")
    p = leaf(
        manage,
        "agent-credentials",
        cmd_manage_agent_credentials,
        "issue an agent its own NATS user (an nkey), permitted only its host's subjects",
    )
    p.add_argument("host", help="the agent's host name (and the credential's name)")
    p.add_argument(
        "--hosts", help="comma-separated hosts it acts for, if not just HOST (an agent of many)"
    )
    p.add_argument(
        "--conf-dir",
        default="~/.local/share/hvmesh",
        help="the directory nats.conf runs from (hvmesh up's --data-dir)",
    )
    manage_tasks.add_parsers(manage, leaf)
