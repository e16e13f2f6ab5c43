"""`hvmesh network|port|keypair ...`: the networking and keypair commands of the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hvmesh.core.cli import output
from hvmesh.core.cli.connect import call
from hvmesh.core.cli.errors import CliError
from hvmesh.core.cli.resources import delete_each, ref

NETWORK_COLUMNS = ["id", "name", "cidr", "gateway", "physical_network", "segmentation_id", "ports"]
PORT_COLUMNS = ["id", "name", "network_id", "ip", "mac", "server_id", "status"]
KEYPAIR_COLUMNS = ["name", "fingerprint", "type"]


def cmd_network_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "cidr": args.cidr,
        "dns_nameservers": args.dns or [],
        "physical_network": args.physical_network,
        "network_type": "vlan" if args.vlan is not None else "flat",
        "mtu": args.mtu,
        "shared": args.shared,
    }
    if args.vlan is not None:
        body["segmentation_id"] = args.vlan
    if args.gateway:
        body["gateway"] = args.gateway
    if args.no_gateway:
        body["gateway"] = "none"
    if args.allocation_pool:
        start, sep, end = args.allocation_pool.partition("-")
        if not sep:
            raise CliError(f"--allocation-pool {args.allocation_pool!r}: expected START-END")
        body["allocation_start"], body["allocation_end"] = start, end
    output.emit(call(args, "networks", "create", body)["network"], args.format)


def cmd_network_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "networks", "list", {})["networks"], args.format, NETWORK_COLUMNS)


def cmd_network_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "networks", "get", ref(args.network))["network"], args.format)


def cmd_network_delete(args: argparse.Namespace) -> None:
    delete_each(args, "networks", args.network, "networks")


def cmd_port_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"network": args.network, "name": args.name or ""}
    if args.fixed_ip:
        body["fixed_ip"] = args.fixed_ip
    if args.mac:
        body["mac"] = args.mac
    output.emit(call(args, "ports", "create", body)["port"], args.format)


def cmd_port_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "ports", "list", {})["ports"], args.format, PORT_COLUMNS)


def cmd_port_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "ports", "get", {"id": args.port})["port"], args.format)


def cmd_port_delete(args: argparse.Namespace) -> None:
    delete_each(args, "ports", args.port, "ports")


def cmd_keypair_create(args: argparse.Namespace) -> None:
    path = Path(args.public_key).expanduser()
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(f"--public-key {args.public_key}: {exc.strerror}") from None
    body = {"name": args.name, "public_key": key}
    output.emit(call(args, "keypairs", "create", body)["keypair"], args.format)


def cmd_keypair_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "keypairs", "list", {})["keypairs"], args.format, KEYPAIR_COLUMNS)


def cmd_keypair_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "keypairs", "get", {"name": args.name})["keypair"], args.format)


def cmd_keypair_delete(args: argparse.Namespace) -> None:
    delete_each(args, "keypairs", args.name, "keypairs", lambda name: {"name": name})


def add_parsers(sub: Any, leaf: Any) -> None:
    """The network, port and keypair command groups."""
    nw = sub.add_parser("network", help="networks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(nw, "create", cmd_network_create, "create a network (admin)")
    p.add_argument("name")
    p.add_argument("--cidr", required=True, help="IPv4 subnet, e.g. 10.0.0.0/24")
    p.add_argument("--gateway", help="default: the first host address")
    p.add_argument("--no-gateway", action="store_true", help="a network without a gateway")
    p.add_argument("--dns", action="append", metavar="ADDRESS", help="DNS server (repeatable)")
    p.add_argument("--allocation-pool", metavar="START-END", help="addresses handed out")
    p.add_argument("--physical-network", default="physnet1", help="mapped on each host")
    p.add_argument("--vlan", type=int, metavar="ID", help="VLAN id: a vlan network")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--shared", action="store_true", help="usable by every project")
    leaf(nw, "list", cmd_network_list, "list networks")
    leaf(nw, "show", cmd_network_show, "show a network").add_argument("network", help="id or name")
    leaf(nw, "delete", cmd_network_delete, "delete networks without ports (admin)").add_argument(
        "network", nargs="+", help="id or name (several may be given)"
    )

    pt = sub.add_parser("port", help="ports").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(pt, "create", cmd_port_create, "create a port (an address on a network)")
    p.add_argument("--network", required=True, help="id or name")
    p.add_argument("--name")
    p.add_argument("--fixed-ip", help="the address to take (default: the next free one)")
    p.add_argument("--mac", help="default: a random fa:16:3e:xx:xx:xx")
    leaf(pt, "list", cmd_port_list, "list ports")
    leaf(pt, "show", cmd_port_show, "show a port").add_argument("port", help="id or name")
    leaf(pt, "delete", cmd_port_delete, "delete free ports").add_argument(
        "port", nargs="+", help="id or name (several may be given)"
    )

    kp = sub.add_parser("keypair", help="SSH keypairs").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(kp, "create", cmd_keypair_create, "import an SSH public key")
    p.add_argument("name")
    p.add_argument("--public-key", required=True, metavar="FILE", help="e.g. ~/.ssh/id_ed25519.pub")
    leaf(kp, "list", cmd_keypair_list, "list your keypairs")
    leaf(kp, "show", cmd_keypair_show, "show a keypair").add_argument("name")
    leaf(kp, "delete", cmd_keypair_delete, "delete keypairs").add_argument(
        "name", nargs="+", help="several may be given"
    )
