"""hvmesh's own IP address management: addresses and MACs for ports.

A network record holds its allocations (`ips`: address -> port id), so taking an
address is one compare-and-set write of that record: two ports allocated at once on one
network can never get the same address; the loser of a race re-reads and takes the
next free one. Allocations made at once from one process are applied in turn and
written together (core/state/coalesce.py), so a busy network costs one write a batch. Addresses come from the allocation range (by default every host address
of the CIDR after the gateway); MACs are random, locally administered (fa:16:3e:..., as
Neutron's base MAC).

A port is made in three writes: the address is taken and marked pending (with the time),
the port record is written, then the mark is cleared (`confirm`). A crash after the
first leaves a pending address with no port: the next allocation on that network frees
it once it is older than CLAIM_GRACE (and `hvmesh manage audit` reports and frees it). A
crash after the second leaves a pending mark on a live port: the next allocation sees
the port and clears the mark. A port writer stalled past the grace finds its address
reclaimed when it confirms, deletes its port and starts again, so no address is ever
held by two ports.
"""

from __future__ import annotations

import ipaddress
import random

import msgspec

from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Network, Port
from hvmesh.core.protocol.requests import NetworkCreate
from hvmesh.core.state import coalesce
from hvmesh.core.state.store import Bucket

MAC_PREFIX = "fa:16:3e"
# Seconds an address may stay taken for a port not written yet before it is free again.
CLAIM_GRACE = 30.0


class NetworkPlan(msgspec.Struct, frozen=True):
    """The Network fields worked out from a create request."""

    cidr: str
    gateway: str | None
    allocation_start: str
    allocation_end: str


def plan(req: NetworkCreate) -> NetworkPlan:
    """Check a network request and work out its gateway and allocation range.

    BadRequest names what is wrong.
    """
    try:
        net = ipaddress.ip_network(req.cidr, strict=True)
    except ValueError as exc:
        raise errors.BadRequest(f"cidr {req.cidr!r}: {exc}") from None
    if net.version != 4:
        raise errors.BadRequest(f"cidr {req.cidr}: only IPv4 networks are supported")
    if net.num_addresses < 4:
        raise errors.BadRequest(f"cidr {req.cidr}: too small (a /30 at least)")
    hosts_first = net.network_address + 1
    hosts_last = net.broadcast_address - 1
    gateway: str | None
    if req.gateway == "none":
        gateway = None
    elif req.gateway is None:
        gateway = str(hosts_first)
    else:
        gateway = str(_in(net, req.gateway, "gateway"))
    start = _in(net, req.allocation_start, "allocation_start") if req.allocation_start else None
    end = _in(net, req.allocation_end, "allocation_end") if req.allocation_end else hosts_last
    if start is None:
        start = hosts_first
        if gateway is not None and ipaddress.ip_address(gateway) == start:
            start += 1
    if start > end:
        raise errors.BadRequest(f"allocation range {start}-{end} is empty")
    for dns in req.dns_nameservers:
        try:
            ipaddress.ip_address(dns)
        except ValueError:
            raise errors.BadRequest(f"dns_nameservers: {dns!r} is not an IP address") from None
    if req.network_type == "vlan" and req.segmentation_id is None:
        raise errors.BadRequest("a vlan network needs segmentation_id (the VLAN id, 1-4094)")
    if req.network_type == "flat" and req.segmentation_id is not None:
        raise errors.BadRequest("segmentation_id is for vlan networks only")
    return NetworkPlan(
        cidr=str(net), gateway=gateway, allocation_start=str(start), allocation_end=str(end)
    )


def _in(net: ipaddress.IPv4Network, text: str, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise errors.BadRequest(f"{what}: {text!r} is not an IP address") from None
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise errors.BadRequest(f"{what}: {addr} is not a host address of {net}")
    assert isinstance(addr, ipaddress.IPv4Address)  # it is in an IPv4 network
    return addr


def new_mac(rng: random.Random | None = None) -> str:
    r = rng or random.SystemRandom()
    return MAC_PREFIX + "".join(f":{r.randrange(256):02x}" for _ in range(3))


def _free_address(network: Network, wanted: str | None) -> str:
    """The address to take: `wanted` if given and free, else the lowest free one."""
    if wanted is not None:
        net = ipaddress.IPv4Network(network.cidr)
        addr = _in(net, wanted, "fixed_ip")
        if str(addr) == network.gateway:
            raise errors.Conflict(f"{addr} is the gateway of network {network.name}")
        if str(addr) in network.ips:
            raise errors.Conflict(f"{addr} is in use on network {network.name}")
        return str(addr)
    start = int(ipaddress.ip_address(network.allocation_start))
    end = int(ipaddress.ip_address(network.allocation_end))
    taken = network.ips
    for n in range(start, end + 1):
        candidate = str(ipaddress.ip_address(n))
        if candidate not in taken and candidate != network.gateway:
            return candidate
    raise errors.Conflict(f"network {network.name} has no free address left")


async def stale_claims(
    network: Network, ports: Bucket[Port], grace: float = CLAIM_GRACE
) -> tuple[dict[str, str], dict[str, str]]:
    """Pending addresses older than `grace`: (those whose port was never written, those
    whose port exists and only the confirm was lost), each as address -> port id."""
    dead: dict[str, str] = {}
    live: dict[str, str] = {}
    cutoff = now() - grace
    for addr, since in network.pending.items():
        port_id = network.ips.get(addr)
        if port_id is None or since > cutoff:
            continue
        entry = await ports.get(port_id)
        if entry is None:
            dead[addr] = port_id
        else:
            live[addr] = port_id
    return dead, live


def settle(n: Network, dead: dict[str, str], live: dict[str, str]) -> Network | None:
    """`n` with dead claims freed and live ones confirmed, each only if unchanged since."""
    ips, pending = dict(n.ips), dict(n.pending)
    for addr, port_id in {**dead, **live}.items():
        if addr in pending and ips.get(addr) == port_id:
            del pending[addr]
            if addr in dead:
                del ips[addr]
    if ips == n.ips and pending == n.pending:
        return None
    return msgspec.structs.replace(n, ips=ips, pending=pending)


async def allocate(
    networks: Bucket[Network],
    network_id: str,
    port_id: str,
    wanted: str | None = None,
    ports: Bucket[Port] | None = None,
) -> str:
    """Take an address on the network for `port_id`, marked pending (compare-and-set);
    returns it. With `ports`, stale claims are settled first (see the module's text)."""
    dead: dict[str, str] = {}
    live: dict[str, str] = {}
    if ports is not None:
        entry = await networks.get(network_id)
        if entry is not None and entry.value.pending:
            dead, live = await stale_claims(entry.value, ports)
    chosen: list[str] = []

    def take(n: Network) -> Network:
        n = settle(n, dead, live) or n
        addr = _free_address(n, wanted)
        chosen[:] = [addr]
        return msgspec.structs.replace(
            n, ips={**n.ips, addr: port_id}, pending={**n.pending, addr: now()}
        )

    if await coalesce.for_bucket(networks).mutate(network_id, take) is None:
        raise errors.NotFound(f"network {network_id} not found")
    return chosen[0]


async def confirm(networks: Bucket[Network], network_id: str, address: str, port_id: str) -> bool:
    """The port is written: clear its address's pending mark. False if the address is no
    longer this port's (reclaimed while the port was being written)."""
    held: list[bool] = [False]

    def clear(n: Network) -> Network | None:
        held[0] = n.ips.get(address) == port_id
        if not held[0] or address not in n.pending:
            return None
        pending = dict(n.pending)
        del pending[address]
        return msgspec.structs.replace(n, pending=pending)

    await coalesce.for_bucket(networks).mutate(network_id, clear)
    return held[0]


async def release(networks: Bucket[Network], network_id: str, address: str, port_id: str) -> None:
    """Give an address back (only if it is still this port's)."""

    def give_back(n: Network) -> Network | None:
        if n.ips.get(address) != port_id:
            return None
        ips = dict(n.ips)
        del ips[address]
        pending = {a: t for a, t in n.pending.items() if a != address}
        return msgspec.structs.replace(n, ips=ips, pending=pending)

    await coalesce.for_bucket(networks).mutate(network_id, give_back)
