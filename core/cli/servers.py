"""`hvmesh server create|list|show|delete|set`: the server commands of the CLI."""

from __future__ import annotations

import argparse
import base64
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvmesh.core.cli import lazy, output, pages
from hvmesh.core.cli.connect import call, call_repeatable, connect_cli
from hvmesh.core.cli.errors import CliError
from hvmesh.core.cli.resources import delete_all, parse_properties
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.states import POWER_STATE_NAMES

CLIENT_TOKEN_VERSION = "1.1"  # the API version that takes a create's client_token

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    import asyncio

    from hvmesh.core.bus import micro as bus
    from hvmesh.core.ops import launcher
else:
    asyncio = lazy.module("asyncio")
    bus = lazy.module("hvmesh.core.bus.micro")
    launcher = lazy.module("hvmesh.core.ops.launcher")

LIST_COLUMNS = ["id", "name", "status", "networks", "image", "flavor"]
LONG_COLUMNS = [
    "id",
    "name",
    "status",
    "task_state",
    "power_state",
    "networks",
    "image",
    "image_id",
    "flavor",
    "flavor_id",
    "availability_zone",
    "host",
    "project_id",
    "created_at",
]
TIME_FIELDS = ("created_at", "updated_at", "launched_at")
STATUSES = (
    "ACTIVE",
    "BUILD",
    "ERROR",
    "HARD_REBOOT",
    "MIGRATING",
    "PAUSED",
    "REBOOT",
    "REBUILD",
    "RESIZE",
    "REVERT_RESIZE",
    "SHELVED",
    "SHELVED_OFFLOADED",
    "SHUTOFF",
    "SUSPENDED",
    "UNKNOWN",
    "VERIFY_RESIZE",
)


# --- how servers are shown ------------------------------------------------------------------


def for_people(fmt: str) -> bool:
    """Whether `fmt` prints cells for people (table, value, csv), not the API's data."""
    return fmt not in ("json", "yaml")


def iso(value: Any) -> Any:
    """Seconds since the epoch as ISO 8601 UTC (2026-12-01T01:23:45Z), as Nova shows times."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return value
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def networks(addresses: dict[str, list[dict[str, Any]]] | None) -> str:
    """Addresses as openstack shows them: `net1=10.0.0.2, 10.0.0.3; net2=10.1.0.5`."""
    return "; ".join(
        f"{net}={', '.join(a['addr'] for a in addrs)}" for net, addrs in (addresses or {}).items()
    )


def fault_text(fault: dict[str, Any] | None) -> str | None:
    """A server's fault in one line: its message, code and when it happened."""
    if not fault:
        return None
    return f"{fault.get('message', '')} (code {fault.get('code')}, created {iso(fault.get('created_at'))})"


def power_name(value: Any) -> str:
    return POWER_STATE_NAMES.get(value, str(value))


def server_row(s: dict[str, Any]) -> dict[str, Any]:
    """A server as a row of `server list`: names, not objects; times in ISO 8601."""
    row = {
        **s,
        "flavor": s["flavor"]["name"],
        "flavor_id": s["flavor"]["id"],
        "image": s["image"]["name"],
        "image_id": s["image"]["id"],
        "power_state": power_name(s.get("power_state")),
        "networks": networks(s.get("addresses")),
        "project_id": s.get("project"),
    }
    for key in TIME_FIELDS:
        row[key] = iso(s.get(key))
    return row


def server_detail(s: dict[str, Any]) -> dict[str, Any]:
    """A server as `server show` prints it: readable addresses, times and fault."""
    detail = {
        **s,
        "flavor": f"{s['flavor']['name']} ({s['flavor']['id']})",
        "image": f"{s['image']['name']} ({s['image']['id']})",
        "power_state": power_name(s.get("power_state")),
        "addresses": networks(s.get("addresses")),
    }
    for key in TIME_FIELDS:
        detail[key] = iso(s.get(key))
    if "fault" in s:
        detail["fault"] = fault_text(s["fault"])
    return detail


def emit_server(args: argparse.Namespace, server: dict[str, Any]) -> None:
    """One server: the API's record with `-f json` or `-f yaml`, else readable."""
    output.emit(server_detail(server) if for_people(args.format) else server, args.format)


def emit_servers(
    args: argparse.Namespace, servers: list[dict[str, Any]], columns: list[str]
) -> None:
    """Servers as rows; `-f json|yaml`: the API's records, with the list's own columns added."""
    if for_people(args.format):
        rows = [server_row(s) for s in servers]
    else:
        rows = [
            {
                **s,
                "networks": networks(s.get("addresses")),
                "flavor_id": s["flavor"]["id"],
                "image_id": s["image"]["id"],
                "project_id": s.get("project"),
            }
            for s in servers
        ]
    output.emit(rows, args.format, columns)


# --- following a server ---------------------------------------------------------------------


async def wait_for_server(
    args: argparse.Namespace,
    server_id: str,
    done: Callable[[dict[str, Any] | None], bool],
    label: str = "",
) -> dict[str, Any] | None:
    """Poll the server until `done(server)`, showing each state change on stderr."""
    nc = await connect_cli(args)
    started = time.monotonic()
    last = None
    try:
        while True:
            try:
                reply = await bus.call(nc, subjects.api("servers", "get"), {"id": server_id})
                server = reply["server"]
            except errors.NotFound:
                server = None
            state = (
                "deleted"
                if server is None
                else f"{server['status']} {server.get('task_state') or ''}".strip()
            )
            if state != last:
                print(
                    f"  {time.monotonic() - started:6.1f}s  {label}{state}",
                    file=sys.stderr,
                    flush=True,
                )
                last = state
            if done(server):
                return server
            if time.monotonic() - started > args.wait_timeout:
                raise CliError(f"server {server_id} is still {state} after {args.wait_timeout:g}s")
            await asyncio.sleep(0.25)  # polling interval between status reads
    finally:
        await nc.close()


# --- commands -------------------------------------------------------------------------------


def cmd_server_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "flavor": args.flavor,
        "image": args.image,
        "metadata": parse_properties(args.property, "--property"),
    }
    if args.availability_zone:
        body["availability_zone"] = args.availability_zone
    hints: dict[str, Any] = {}
    for key, value in parse_properties(args.hint, "--hint").items():
        if key not in ("same_host", "different_host"):
            raise CliError(f"--hint {key}: expected same_host=ID or different_host=ID")
        hints.setdefault(key, []).append(value)
    if args.group:
        hints["group"] = args.group
    if hints:
        body["scheduler_hints"] = hints
    body.update(interface_options(args))
    if args.min is not None:
        body["min_count"] = args.min
    if args.max is not None:
        body["max_count"] = args.max
    # A token of its own makes the create safe to ask again when no answer came (the API
    # answers a repeat with the first one's servers): asked again at once, and by a
    # script running the same command with the same --client-token.
    body["client_token"] = args.client_token or str(uuid.uuid4())
    reply = call_repeatable(args, "servers", "create", body, CLIENT_TOKEN_VERSION)
    if "servers" in reply:
        create_many(args, reply["servers"])
        return
    server = reply["server"]
    if args.wait:
        server = launcher.run(
            wait_for_server(
                args, server["id"], lambda s: s is not None and s["status"] in ("ACTIVE", "ERROR")
            )
        )
        assert server is not None
    emit_server(args, server)
    if args.wait and server["status"] == "ERROR":
        fault = server.get("fault") or {}
        raise CliError(f"server {server['id']} went to ERROR: {fault.get('message', 'no fault')}")


def interface_options(args: argparse.Namespace) -> dict[str, Any]:
    """--network, --port, --key-name, --user-data and --config-drive of server create."""
    body: dict[str, Any] = {}
    if args.network:
        body["networks"] = args.network
    if args.port:
        body["ports"] = args.port
    if args.key_name:
        body["key_name"] = args.key_name
    if args.user_data:
        try:
            raw = Path(args.user_data).expanduser().read_bytes()
        except OSError as exc:
            raise CliError(f"--user-data {args.user_data}: {exc.strerror}") from None
        body["user_data"] = base64.b64encode(raw).decode()
    if args.config_drive:
        body["config_drive"] = True
    return body


def create_many(args: argparse.Namespace, servers: list[dict[str, Any]]) -> None:
    """A multi-create's servers; with --wait, each until it is ACTIVE, ERROR or not created."""
    if args.wait:

        async def settle() -> list[dict[str, Any] | None]:
            return [
                await wait_for_server(
                    args,
                    s["id"],
                    lambda s: s is None or s["status"] in ("ACTIVE", "ERROR"),
                    label=f"{s['name']}: ",
                )
                for s in servers
            ]

        settled = launcher.run(settle())
        servers = [s for s in settled if s is not None]
    emit_servers(args, servers, LIST_COLUMNS)
    failed = [s for s in servers if s["status"] == "ERROR"]
    if args.wait and failed:
        fault = failed[0].get("fault") or {}
        raise CliError(
            f"{len(failed)} of {len(servers)} servers went to ERROR: "
            f"{fault.get('message', 'no fault')}"
        )


def list_body(args: argparse.Namespace) -> dict[str, Any]:
    """The servers.list request of `server list`'s options."""
    body: dict[str, Any] = {}
    if args.all_projects or args.project is not None:  # --project implies it, as openstack's
        body["all_projects"] = True
    for key in ("project", "status", "name", "host", "flavor", "image", "marker"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.changes_since is not None:
        body["changes_since"] = args.changes_since
    if args.limit is not None and args.limit != -1:  # -1: all, as openstack's
        body["limit"] = args.limit
    return body


def cmd_server_list(args: argparse.Namespace) -> None:
    """One page with --limit N, else every page (from --marker, if given)."""
    body = list_body(args)
    if "limit" in body:
        reply = call(args, "servers", "list", body)
        servers = reply["servers"]
        following = pages.next_marker(reply, "servers")
        if following is not None:
            print(f"more servers follow: --marker {following}", file=sys.stderr, flush=True)
    else:
        servers = pages.list_all(args, "servers", "list", body, "servers")
    emit_servers(args, servers, LONG_COLUMNS if args.long else LIST_COLUMNS)


def cmd_server_show(args: argparse.Namespace) -> None:
    emit_server(args, call(args, "servers", "get", {"id": args.server})["server"])


def cmd_server_delete(args: argparse.Namespace) -> None:
    """Delete each server; with --wait follow each until it is gone (or in ERROR)."""
    refs = args.server
    replies, failed = launcher.run(
        delete_all(args, subjects.api("servers", "delete"), refs, lambda r: {"id": r})
    )
    rows = []
    for reply in replies:
        server = reply["server"]
        if not args.wait:
            rows.append({"deleting": server["id"]})
            continue
        last = launcher.run(
            wait_for_server(args, server["id"], lambda s: s is None or s["status"] == "ERROR")
        )
        if last is None:
            rows.append({"deleted": server["id"]})
            continue
        failed += 1
        message = (last.get("fault") or {}).get("message", "no fault")
        error = f"server {server['id']} went to ERROR while deleting: {message}"
        if len(refs) == 1:
            raise CliError(error)
        print(f"error: {error}", file=sys.stderr, flush=True)
    if len(refs) == 1:
        output.emit(rows[0], args.format)
    elif rows or not for_people(args.format):
        output.emit(rows, args.format, ["deleted" if args.wait else "deleting"])
    if failed:
        raise CliError(f"Failed to delete {failed} of {len(refs)} servers")


def cmd_server_set(args: argparse.Namespace) -> None:
    """`server set [--name N] [--property K=V]... [--state active|error]`: rename, set
    metadata (servers.update) and Nova's reset-state (an admin's action)."""
    metadata: dict[str, str | None] = dict(parse_properties(args.property, "--property"))
    if args.name is None and not metadata and args.state is None:
        raise CliError("give --name, --property KEY=VALUE or --state")
    server: dict[str, Any] = {}
    if args.name is not None or metadata:
        body = {"id": args.server, "name": args.name, "metadata": metadata}
        server = call(args, "servers", "update", body)["server"]
    if args.state is not None:
        body = {"id": args.server, "action": "reset-state", "state": args.state}
        reply = call(args, "servers", "action", body)
        server = {**reply["server"], "request_id": reply["request_id"]}
    emit_server(args, server)


def cmd_server_unset(args: argparse.Namespace) -> None:
    """`server unset --property KEY...`: remove metadata items."""
    body = {"id": args.server, "metadata": dict.fromkeys(args.property)}
    emit_server(args, call(args, "servers", "update", body)["server"])


def add_parsers(sv: Any, leaf: Any) -> None:
    """server create, list, show, delete and set, under `sv`."""
    p = leaf(sv, "create", cmd_server_create, "boot a server")
    p.add_argument("name")
    p.add_argument("--flavor", required=True, help="id or name")
    p.add_argument("--image", required=True, help="id or name")
    p.add_argument("--availability-zone")
    p.add_argument("--property", action="append", metavar="KEY=VALUE", help="metadata")
    p.add_argument("--group", help="server group (id or name): join it and follow its policy")
    p.add_argument(
        "--hint", action="append", metavar="KEY=ID", help="same_host=ID or different_host=ID"
    )
    p.add_argument(
        "--network", action="append", metavar="NET", help="an interface on NET (repeatable)"
    )
    p.add_argument("--port", action="append", metavar="PORT", help="an existing free port")
    p.add_argument("--key-name", help="keypair whose public key the guest gets")
    p.add_argument("--user-data", metavar="FILE", help="user data for cloud-init")
    p.add_argument("--config-drive", action="store_true", help="also give a config drive")
    p.add_argument("--min", type=int, metavar="N", help="multi-create: at least N servers")
    p.add_argument("--max", type=int, metavar="N", help="multi-create: at most N servers")
    p.add_argument(
        "--client-token",
        metavar="TOKEN",
        help="make the create idempotent: the same TOKEN again (from a retry of this "
        "command) gets the first create's server instead of a second one "
        "(default: a new token, so only this command's own retries are merged)",
    )
    p.add_argument("--wait", action="store_true", help="show progress until ACTIVE or ERROR")
    p.add_argument("--wait-timeout", type=float, default=300.0)

    p = leaf(sv, "list", cmd_server_list, "list servers, oldest first")
    p.add_argument("--long", action="store_true", help="more columns")
    p.add_argument("--all-projects", action="store_true", help="every project's servers (admin)")
    p.add_argument(
        "--status", type=str.upper, choices=STATUSES, metavar="STATUS", help="e.g. ACTIVE"
    )
    p.add_argument("--name", metavar="REGEX", help="names matching this regular expression")
    p.add_argument("--host", help="servers on this host (admin)")
    p.add_argument("--flavor", help="id or name")
    p.add_argument("--image", help="id or name")
    p.add_argument("--project", help="this project's servers only (admin; implies --all-projects)")
    p.add_argument(
        "--changes-since",
        metavar="TIME",
        help="servers changed at or after TIME (ISO 8601, e.g. 2026-12-01T10:00:00Z)",
    )
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="one page of at most N servers (default: every page; -1: all)",
    )
    p.add_argument("--marker", metavar="ID", help="start after this server")

    leaf(sv, "show", cmd_server_show, "show a server").add_argument("server", help="id or name")
    p = leaf(sv, "delete", cmd_server_delete, "delete servers")
    p.add_argument("server", nargs="+", help="id or name (several may be given)")
    p.add_argument("--wait", action="store_true", help="wait until they are gone")
    p.add_argument("--wait-timeout", type=float, default=300.0)

    p = leaf(sv, "set", cmd_server_set, "rename a server, set metadata, or reset its state")
    p.add_argument("server", help="id or name")
    p.add_argument("--name", help="the server's new name")
    p.add_argument("--property", action="append", metavar="KEY=VALUE", help="metadata")
    p.add_argument(
        "--state", choices=["active", "error"], help="the vm_state to set (admin: reset-state)"
    )
    p = leaf(sv, "unset", cmd_server_unset, "remove metadata items from a server")
    p.add_argument("server", help="id or name")
    p.add_argument(
        "--property", action="append", required=True, metavar="KEY", help="a metadata key"
    )
