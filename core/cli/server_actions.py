"""`hvmesh server <action>`, `server event`, `console log show`: servers.action from the CLI.

Each action command sends hvmesh.api.servers.action. openstack's spellings work beside
hvmesh's own: `server resize confirm|revert SERVER` (also `resize-confirm`,
`resize-revert`), `server migrate --live-migration` (also `--live`), `console log show`
(also `server console-log`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core.cli import consoles, lazy, output, server_image
from hvmesh.core.cli.connect import api, call
from hvmesh.core.cli.errors import CliError
from hvmesh.core.cli.servers import emit_server, for_people, iso, wait_for_server
from hvmesh.core.protocol import subjects

# Imported when first used: parsing the command line (and --help) needs none of it.
if TYPE_CHECKING:
    from hvmesh.core.ops import launcher
else:
    launcher = lazy.module("hvmesh.core.ops.launcher")


class ServerAction(msgspec.Struct, frozen=True):
    """One `hvmesh server <command>`: the action it sends and how its body is built."""

    action: str
    help: str
    body: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    # (flags, argparse keyword arguments) of the command's own options.
    options: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()
    waits: bool = True  # runs on the conductor: --wait follows it until it is done


def _host(args: argparse.Namespace) -> dict[str, Any]:
    return {"host": args.host} if args.host else {}


_HOST = (("--host",), {"help": "target host (admin; default: the scheduler chooses)"})

SERVER_ACTIONS: dict[str, ServerAction] = {
    "reboot": ServerAction(
        "reboot",
        "reboot a server (soft: the guest restarts; --hard: power cycle)",
        lambda args: {"type": "HARD" if args.hard else "SOFT"},
        ((("--hard",), {"action": "store_true", "help": "power cycle it"}),),
    ),
    "stop": ServerAction("stop", "power a server off (SHUTOFF)"),
    "start": ServerAction("start", "power a stopped server on"),
    "pause": ServerAction("pause", "pause a server in memory"),
    "unpause": ServerAction("unpause", "unpause a paused server"),
    "suspend": ServerAction("suspend", "suspend a server to disk"),
    "resume": ServerAction("resume", "resume a suspended server"),
    "rebuild": ServerAction(
        "rebuild",
        "recreate a server from an image, keeping its id, host and claims",
        lambda args: {"image": args.image},
        ((("--image",), {"required": True, "help": "id or name"}),),
    ),
    "resize": ServerAction(
        "resize",
        "move a server to another flavor (then resize confirm or resize revert)",
        lambda args: {"flavor": args.flavor},  # --flavor: see add_parsers
    ),
    "resize-confirm": ServerAction("confirm-resize", "confirm a resize or migration"),
    "resize-revert": ServerAction("revert-resize", "revert a resize or migration"),
    "migrate": ServerAction(
        "migrate",
        "move a server to another host (admin): cold, or --live",
        lambda args: {"action": "live-migrate" if args.live else "migrate", **_host(args)},
        (
            _HOST,
            (("--live", "--live-migration"), {"action": "store_true", "help": "live migration"}),
        ),
    ),
    "shelve": ServerAction("shelve", "shelve a server (power off, keep an image)"),
    "shelve-offload": ServerAction("shelve-offload", "free a shelved server's host"),
    "unshelve": ServerAction("unshelve", "bring a shelved server back"),
    "evacuate": ServerAction(
        "evacuate",
        "rebuild a server of a down host on another host (admin)",
        _host,
        (_HOST,),
    ),
    "lock": ServerAction(
        "lock",
        "lock a server against actions by others",
        lambda args: {"reason": args.reason} if args.reason else {},
        ((("--reason",), {"help": "why (shown to others)"}),),
        waits=False,
    ),
    "unlock": ServerAction("unlock", "unlock a server", waits=False),
    "console-log": ServerAction(
        "console-log",
        "print a server's console output",
        lambda args: {"length": args.lines} if args.lines is not None else {},
        ((("--lines",), {"type": int, "metavar": "N", "help": "the last N lines only"}),),
        waits=False,
    ),
    "attach-interface": ServerAction(
        "attach-interface",
        "plug a new interface into a server: a port on --network, or --port",
        lambda args: {
            k: v
            for k, v in (
                ("network", args.network),
                ("port", args.port),
                ("fixed_ip", args.fixed_ip),
            )
            if v
        },
        (
            (("--network",), {"help": "network id or name: a new port on it"}),
            (("--port",), {"help": "an existing free port (id or name)"}),
            (("--fixed-ip",), {"help": "with --network: the address to take"}),
        ),
    ),
    "detach-interface": ServerAction(
        "detach-interface",
        "unplug an interface (its port goes if hvmesh made it)",
        lambda args: {"port": args.port},
        ((("--port",), {"required": True, "help": "the interface's port (id or name)"}),),
    ),
    "reset-state": ServerAction(
        "reset-state",
        "set a stuck server's state to ERROR, or ACTIVE with --active (admin)",
        lambda args: {"state": "active" if args.active else "error"},
        ((("--active",), {"action": "store_true", "help": "reset to ACTIVE"}),),
        waits=False,
    ),
}


RESIZE_WORDS = {"confirm": "resize-confirm", "revert": "resize-revert"}


def action_body(args: argparse.Namespace) -> dict[str, Any]:
    """The servers.action body of `hvmesh server <command> ...`."""
    spec = SERVER_ACTIONS[args.spec]
    return {"id": args.server, "action": spec.action, **spec.body(args)}


def cmd_server_action(args: argparse.Namespace) -> None:
    spec = SERVER_ACTIONS[args.spec]
    reply = launcher.run(api(args, subjects.api("servers", "action"), action_body(args)))
    if "output" in reply:  # console-log
        if for_people(args.format):
            output.write_all(reply["output"], sys.stdout)
        else:
            output.emit(reply, args.format)
        return
    server, request_id = reply["server"], reply["request_id"]
    waits = spec.waits and getattr(args, "wait", False)
    if waits:
        followed = launcher.run(
            wait_for_server(args, server["id"], lambda s: s is None or s["task_state"] is None)
        )
        if followed is None:
            raise CliError(f"server {server['id']} was deleted during {args.spec}")
        server = followed
    emit_server(args, {**server, "request_id": request_id})
    if waits:
        fault = server.get("fault")
        if server["status"] == "ERROR" or fault:
            message = (fault or {}).get("message", "no fault")
            raise CliError(f"{args.spec} of server {server['id']} failed: {message}")


def cmd_server_resize(args: argparse.Namespace) -> None:
    """`server resize SERVER --flavor F`, `server resize confirm|revert SERVER`."""
    words = args.words
    if len(words) == 2 and words[0] in RESIZE_WORDS:
        if args.flavor:
            raise CliError(f"server resize {words[0]} takes no --flavor")
        args.spec, args.server = RESIZE_WORDS[words[0]], words[1]
    elif len(words) == 1:
        if not args.flavor:
            raise CliError("server resize: give --flavor FLAVOR, or: resize confirm|revert SERVER")
        args.server = words[0]
    else:
        raise CliError("server resize: expected SERVER --flavor FLAVOR or confirm|revert SERVER")
    cmd_server_action(args)


EVENT_COLUMNS = ["request_id", "action", "start_time", "message", "user"]
STEP_COLUMNS = ["event", "result", "start_time", "finish_time", "host", "details"]


def _times(row: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if k.endswith("_time") else v for k, v in row.items()}


def cmd_server_event_list(args: argparse.Namespace) -> None:
    found = call(args, "servers", "events.list", {"id": args.server})["instance_actions"]
    if for_people(args.format):
        found = [_times(a) for a in found]
    output.emit(found, args.format, EVENT_COLUMNS)


def cmd_server_event_show(args: argparse.Namespace) -> None:
    body = {"id": args.server, "request_id": args.request_id}
    action = call(args, "servers", "events.get", body)["instance_action"]
    if not for_people(args.format):
        output.emit(action, args.format)
        return
    steps = [_times(e) for e in action.pop("events")]
    output.emit(_times(action), args.format)
    print()
    output.emit(steps, args.format, STEP_COLUMNS)


def add_parsers(sub: Any, sv: Any, leaf: Any) -> None:
    """The action commands and `event` under `server` (`sv`), and `console log show`."""
    for command, spec in SERVER_ACTIONS.items():
        if command == "resize":
            p = leaf(sv, command, cmd_server_resize, spec.help)
            p.add_argument(
                "words", nargs="+", metavar="SERVER", help="SERVER, or confirm|revert SERVER"
            )
            p.add_argument("--flavor", help="id or name (to resize)")
        else:
            p = leaf(sv, command, cmd_server_action, spec.help)
            p.add_argument("server", help="id or name")
            for flags, kwargs in spec.options:
                p.add_argument(*flags, **kwargs)
        if spec.waits:
            p.add_argument(
                "--wait", action="store_true", help="follow it until done; fail if it failed"
            )
            p.add_argument("--wait-timeout", type=float, default=300.0)
        p.set_defaults(spec=command)
    ev = sv.add_parser("event", help="a server's action log").add_subparsers(
        dest="event_action", required=True, metavar="ACTION"
    )
    leaf(ev, "list", cmd_server_event_list, "a server's actions, newest first").add_argument(
        "server", help="id or name"
    )
    p = leaf(ev, "show", cmd_server_event_show, "one action and its steps")
    p.add_argument("server", help="id or name")
    p.add_argument("request_id")

    console = sub.add_parser("console", help="server consoles").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    log = console.add_parser("log", help="console output").add_subparsers(
        dest="log_action", required=True, metavar="ACTION"
    )
    spec = SERVER_ACTIONS["console-log"]
    p = leaf(log, "show", cmd_server_action, "print a server's console output")
    p.add_argument("server", help="id or name")
    for flags, kwargs in spec.options:
        p.add_argument(*flags, **kwargs)
    p.set_defaults(spec="console-log")
    consoles.add_parsers(console, leaf)
    server_image.add_parsers(sv, leaf)
