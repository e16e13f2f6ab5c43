"""`hvmesh manage audit`: operator maintenance straight on hvmesh's buckets."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.ops import audit, launcher
    from hvmesh.core.state import store as state_store
else:
    audit = lazy.module("hvmesh.core.ops.audit")
    launcher = lazy.module("hvmesh.core.ops.launcher")
    state_store = lazy.module("hvmesh.core.state.store")


def cmd_manage_audit(args: argparse.Namespace) -> None:
    store_class = state_store.Store  # read now: its module loads outside the try below

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
            return await audit.audit(store, heal=args.heal)
        finally:
            await nc.close()

    found = launcher.run(run())
    rows = [msgspec.to_builtins(f) for f in found]
    if rows or not output.for_people(args.format):
        output.emit(rows, args.format, ["kind", "host", "server_id", "message", "healed"])
    else:
        print("audit: clean")
    unhealed = [f for f in found if not f.healed]
    if unhealed:
        raise CliError(
            f"{len(unhealed)} finding(s) left"
            + ("" if args.heal else "; --heal fixes all but overcommit")
        )


def add_parsers(sub: Any, leaf: Any) -> None:
    """The manage command group."""
    manage = sub.add_parser("manage", help="operator maintenance").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(
        manage,
        "audit",
        cmd_manage_audit,
        "compare host allocations with servers: overcommit, leaked, missing, mismatched, double",
    )
    p.add_argument("--heal", action="store_true", help="fix what can be fixed")
