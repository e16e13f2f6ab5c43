"""`hvmesh manage tasks list|show|retry|drop`: the dead letters, work hvmesh gave up on."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.ops import launcher
    from hvmesh.core.state import dead_letters
else:
    launcher = lazy.module("hvmesh.core.ops.launcher")
    dead_letters = lazy.module("hvmesh.core.state.dead_letters")

R = TypeVar("R")

COLUMNS = ["id", "component", "subject", "deliveries", "error", "at"]


def _run(args: argparse.Namespace, job: Callable[[Any], Awaitable[R]]) -> R:
    """Run `job(js)` on one connection; a deployment without the stream is one clear line."""
    from nats.js.errors import NotFoundError  # with the connection, not at start-up

    async def run() -> R:
        nc = await connect_cli(args)
        try:
            js = nc.jetstream()
            try:
                return await job(js)
            except NotFoundError:
                raise CliError(
                    "no dead-letter stream HVMESH_DEAD_LETTERS: start a conductor of this "
                    "version once to create it"
                ) from None
        finally:
            await nc.close()

    return launcher.run(run())


def _id(args: argparse.Namespace) -> int:
    return dead_letters.parse_id(args.id)


def cmd_tasks_list(args: argparse.Namespace) -> None:
    found = _run(args, lambda js: dead_letters.listing(js, args.component))
    rows = [msgspec.to_builtins(d) for d in found]
    for row in rows:
        row.pop("data")  # `show` prints the message itself
    output.emit(rows, args.format, COLUMNS)


def cmd_tasks_show(args: argparse.Namespace) -> None:
    dead_id = _id(args)
    output.emit(
        msgspec.to_builtins(_run(args, lambda js: dead_letters.get(js, dead_id))), args.format
    )


def cmd_tasks_retry(args: argparse.Namespace) -> None:
    dead_id = _id(args)
    letter = _run(args, lambda js: dead_letters.retry(js, dead_id))
    print(f"dead letter {dead_id} published again on {letter.subject}")


def cmd_tasks_drop(args: argparse.Namespace) -> None:
    dead_id = _id(args)
    _run(args, lambda js: dead_letters.drop(js, dead_id))
    print(f"dead letter {dead_id} dropped")


def add_parsers(manage: Any, leaf: Any) -> None:
    """`manage tasks ...`, under the manage command group's subparsers."""
    tasks = manage.add_parser(
        "tasks", help="tasks, events and agent work given up on (dead letters)"
    ).add_subparsers(dest="tasks_action", required=True, metavar="ACTION")
    p = leaf(tasks, "list", cmd_tasks_list, "list dead letters, oldest first")
    p.add_argument(
        "--component",
        metavar="C",
        help="only those one component gave up on: conductor-tasks, conductor-events, "
        "conductor-timers, agent-<host>",
    )
    for name, func, text in (
        ("show", cmd_tasks_show, "show a dead letter and its message"),
        ("retry", cmd_tasks_retry, "publish a dead letter's message again and remove it"),
        ("drop", cmd_tasks_drop, "remove a dead letter"),
    ):
        leaf(tasks, name, func, text).add_argument("id", help="dead letter id (from list)")
