"""`hvmesh hypervisor|availability zone|compute service|server-group ...`: compute commands."""

from __future__ import annotations

import argparse
from typing import Any

from hvmesh.core.cli import output, pages
from hvmesh.core.cli.connect import call
from hvmesh.core.cli.errors import CliError
from hvmesh.core.cli.resources import delete_each, ref
from hvmesh.core.cli.servers import for_people, iso

HYPERVISOR_COLUMNS = [
    "name",
    "state",
    "status",
    "availability_zone",
    "vcpus_used",
    "vcpus",
    "memory_mb_used",
    "memory_mb",
    "local_gb_used",
    "local_gb",
    "running_vms",
]
ZONE_COLUMNS = ["zone_name", "zone_status"]
SERVICE_COLUMNS = ["id", "binary", "host", "zone", "status", "state", "updated_at"]
GROUP_COLUMNS = ["id", "name", "policy", "max_server_per_host", "members"]


def cmd_hypervisor_list(args: argparse.Namespace) -> None:
    output.emit(
        call(args, "hypervisors", "list", {})["hypervisors"], args.format, HYPERVISOR_COLUMNS
    )


def cmd_hypervisor_show(args: argparse.Namespace) -> None:
    hypervisor = call(args, "hypervisors", "get", ref(args.hypervisor))["hypervisor"]
    if for_people(args.format):
        hypervisor = {**hypervisor, "heartbeat": iso(hypervisor.get("heartbeat"))}
    output.emit(hypervisor, args.format)


def cmd_zone_list(args: argparse.Namespace) -> None:
    zones = call(args, "availability_zones", "list", {})["availability_zones"]
    output.emit(zones, args.format, [*ZONE_COLUMNS, "hosts"] if args.long else ZONE_COLUMNS)


def cmd_service_list(args: argparse.Namespace) -> None:
    services = call(args, "services", "list", {})["services"]
    if for_people(args.format):
        services = [{**s, "updated_at": iso(s.get("updated_at"))} for s in services]
    output.emit(services, args.format, SERVICE_COLUMNS)


def cmd_service_set(args: argparse.Namespace) -> None:
    """`compute service set HOST --disable [--disable-reason R] | --enable` (as openstack's)."""
    if args.enable == args.disable:
        raise CliError("give --enable or --disable")
    if args.disable_reason is not None and not args.disable:
        raise CliError("--disable-reason goes with --disable")
    body: dict[str, Any] = {"host": args.host, "status": "enabled" if args.enable else "disabled"}
    if args.disable_reason is not None:
        body["disabled_reason"] = args.disable_reason
    output.emit(call(args, "services", "set", body)["service"], args.format)


def cmd_group_create(args: argparse.Namespace) -> None:
    body = {"name": args.name, "policy": args.policy, "max_server_per_host": args.max_per_host}
    output.emit(call(args, "server_groups", "create", body)["server_group"], args.format)


def cmd_group_list(args: argparse.Namespace) -> None:
    groups = call(args, "server_groups", "list", {})["server_groups"]
    output.emit(groups, args.format, GROUP_COLUMNS)


def cmd_group_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "server_groups", "get", {"id": args.group})["server_group"], args.format)


def cmd_group_delete(args: argparse.Namespace) -> None:
    delete_each(args, "server_groups", args.group, "server groups", lambda r: {"id": r})


MIGRATION_COLUMNS = ["id", "server_id", "kind", "source_host", "dest_host", "status", "created_at"]


def cmd_migration_list(args: argparse.Namespace) -> None:
    """`server migration list`: every move, newest first (admin), walked page by page."""
    body: dict[str, Any] = {}
    for key, value in (
        ("server_id", args.server),
        ("host", args.host),
        ("status", args.status),
        ("kind", args.type),
        ("project", args.project),
    ):
        if value is not None:
            body[key] = value
    rows = pages.list_all(args, "migrations", "list", body, "migrations")
    if for_people(args.format):
        rows = [{**m, "created_at": iso(m.get("created_at"))} for m in rows]
    output.emit(rows, args.format, MIGRATION_COLUMNS)


def add_migration_parsers(sv: Any, leaf: Any) -> None:
    """`server migration list`, under the server commands `sv`."""
    mg = sv.add_parser("migration", help="server moves (admin)").add_subparsers(
        dest="migration_action", required=True, metavar="ACTION"
    )
    p = leaf(mg, "list", cmd_migration_list, "list server moves, newest first (admin)")
    p.add_argument("--server", help="one server's moves (its id)")
    p.add_argument("--host", help="moves from or to this host")
    p.add_argument("--status", help="e.g. finished, confirmed, reverted, completed, error")
    p.add_argument("--type", choices=["resize", "migration", "live-migration", "evacuation"])
    p.add_argument("--project", help="one project's moves")


def add_group_parsers(parent: Any, name: str, leaf: Any) -> None:
    """The server group commands, as `parent NAME create|list|show|delete`."""
    sg = parent.add_parser(name, help="server groups").add_subparsers(
        dest="group_action", required=True, metavar="ACTION"
    )
    p = leaf(sg, "create", cmd_group_create, "create a server group")
    p.add_argument("name")
    p.add_argument(
        "--policy",
        required=True,
        choices=["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"],
    )
    p.add_argument("--max-per-host", type=int, default=1, help="anti-affinity: members per host")
    leaf(sg, "list", cmd_group_list, "list server groups")
    leaf(sg, "show", cmd_group_show, "show a server group").add_argument("group", help="id or name")
    leaf(sg, "delete", cmd_group_delete, "delete server groups").add_argument(
        "group", nargs="+", help="id or name (several may be given)"
    )


def add_parsers(sub: Any, leaf: Any) -> None:
    """hypervisor list|show, availability zone list, compute service list, server-group."""
    hv = sub.add_parser("hypervisor", help="hypervisors (admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(hv, "list", cmd_hypervisor_list, "list hypervisors (admin)")
    leaf(hv, "show", cmd_hypervisor_show, "show a hypervisor (admin)").add_argument(
        "hypervisor", metavar="HOST", help="host name"
    )

    az = sub.add_parser("availability", help="availability zones").add_subparsers(
        dest="action", required=True, metavar="zone"
    )
    zone = az.add_parser("zone", help="availability zones").add_subparsers(
        dest="zone_action", required=True, metavar="ACTION"
    )
    p = leaf(zone, "list", cmd_zone_list, "list availability zones and whether they are usable")
    p.add_argument("--long", action="store_true", help="also their hosts (admin)")

    compute = sub.add_parser("compute", help="compute services (admin)").add_subparsers(
        dest="action", required=True, metavar="service"
    )
    service = compute.add_parser("service", help="compute services (admin)").add_subparsers(
        dest="service_action", required=True, metavar="ACTION"
    )
    leaf(
        service,
        "list",
        cmd_service_list,
        "API, conductor, scheduler and compute services, up or down (admin)",
    )
    p = leaf(service, "set", cmd_service_set, "enable or disable a host for new servers (admin)")
    p.add_argument("host", metavar="HOST")
    p.add_argument("binary", nargs="?", choices=["hvmesh-compute"], help="as openstack's")
    p.add_argument("--enable", action="store_true")
    p.add_argument("--disable", action="store_true")
    p.add_argument("--disable-reason", metavar="REASON")

    add_group_parsers(sub, "server-group", leaf)
