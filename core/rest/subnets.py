"""Network v2.0 subnets: each hvmesh network's CIDR, gateway, DNS and allocation range as one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.rest.calls import json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.network_views import PREFIX, Neutron, matches, subnet_view
from hvmesh.core.rest.networks import find
from hvmesh.core.rest.pending_networks import PendingNetworks, new

LOG = log.get_logger(__name__)

SUBNET_FILTERS = ("id", "name", "network_id", "cidr", "ip_version", "gateway_ip",
                  "project_id", "tenant_id", "enable_dhcp")  # fmt: skip
UNSUPPORTED = ("host_routes", "subnetpool_id", "prefixlen", "ipv6_ra_mode", "ipv6_address_mode",
               "segment_id", "service_types")  # fmt: skip


async def all_subnets(c: Neutron) -> list[dict[str, Any]]:
    return [subnet_view(n) for n in await c.every("networks") if n.get("cidr")]


async def find_subnet(c: Neutron, ref: str) -> dict[str, Any]:
    subnets = await all_subnets(c)
    found = [s for s in subnets if s["id"] == ref] or [s for s in subnets if s["name"] == ref]
    if len(found) != 1:
        raise RestError(404, f"Subnet {ref} could not be found.")
    return found[0]


async def index(request: web.Request) -> web.Response:
    c = Neutron(request)
    subnets = [s for s in await all_subnets(c) if matches(c, s, SUBNET_FILTERS)]
    return c.listing("subnets", subnets)


async def show(request: web.Request) -> web.Response:
    c = Neutron(request)
    return c.reply({"subnet": c.only_fields(await find_subnet(c, request.match_info["id"]))})


def _range(body: dict[str, Any]) -> dict[str, Any]:
    """hvmesh's cidr, gateway, DNS and allocation range from a POST /subnets body."""
    if body.get("ip_version", 4) not in (4, "4"):
        raise RestError(400, "subnet.ip_version: hvmesh networks are IPv4 (4)")
    for key in UNSUPPORTED:
        if body.get(key) not in (None, [], ""):
            raise RestError(400, f"subnet.{key}: not supported by hvmesh networks")
    cidr = body.get("cidr")
    if not isinstance(cidr, str) or not cidr:
        raise RestError(400, "subnet.cidr: the subnet's IPv4 CIDR (a subnet pool is not offered)")
    out: dict[str, Any] = {"cidr": cidr}
    if "gateway_ip" in body:
        gateway = body["gateway_ip"]
        if gateway is not None and not isinstance(gateway, str):
            raise RestError(400, "subnet.gateway_ip: an address, or null for none")
        out["gateway"] = "none" if gateway is None else gateway
    dns = body.get("dns_nameservers") or []
    if not isinstance(dns, list) or not all(isinstance(a, str) for a in dns):
        raise RestError(400, "subnet.dns_nameservers: a list of addresses")
    if dns:
        out["dns_nameservers"] = dns
    pools = body.get("allocation_pools") or []
    if not isinstance(pools, list) or len(pools) > 1:
        raise RestError(400, "subnet.allocation_pools: hvmesh networks have one range")
    if pools:
        pool = pools[0]
        if not isinstance(pool, dict) or not pool.get("start") or not pool.get("end"):
            raise RestError(400, "subnet.allocation_pools: [{start, end}]")
        out["allocation_start"], out["allocation_end"] = pool["start"], pool["end"]
    return out


async def create(request: web.Request) -> web.Response:
    """POST /subnets: the hvmesh network of a network recorded by POST /networks."""
    c = Neutron(request)
    body = await json_body(request, "subnet")
    network_id = body.get("network_id")
    if not isinstance(network_id, str) or not network_id:
        raise RestError(400, "subnet.network_id: the network the subnet is on")
    wanted = _range(body)
    network = await find(c, network_id)
    if network.get("cidr"):
        raise RestError(409, f"network {network['name']} has its subnet already (hvmesh: one)")
    req = {
        **wanted,
        "name": network["name"],
        "physical_network": network["physical_network"],
        "network_type": network["network_type"],
        "mtu": network["mtu"],
        "shared": network["shared"],
        "id": network["id"],  # the network keeps the id clients know it by
    }
    if network.get("segmentation_id") is not None:
        req["segmentation_id"] = network["segmentation_id"]
    made = (await c.call("networks", "create", req))["network"]
    await PendingNetworks(c.token.nc).drop(network["id"])
    LOG.info("rest.subnet_made", network=made["id"])
    return c.reply({"subnet": subnet_view(made)}, status=201)


def _pending_fields(network: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "project", "shared", "mtu", "physical_network", "network_type",
            "segmentation_id", "created_at")  # fmt: skip
    return {k: network[k] for k in keys if network.get(k) is not None}


async def delete(request: web.Request) -> web.Response:
    """DELETE /subnets/{id}: its hvmesh network goes, the network stays (same id), no subnet."""
    c = Neutron(request)
    subnet = await find_subnet(c, request.match_info["id"])
    if not c.is_admin:
        raise RestError(403, "only the admin deletes subnets (hvmesh: the network's range)")
    network = dict((await c.call("networks", "get", {"id": subnet["network_id"]}))["network"])
    if network.get("ports"):
        raise RestError(409, f"subnet {subnet['id']} has {network['ports']} port(s) in use")
    store = PendingNetworks(c.token.nc)
    fields = _pending_fields(network)
    await store.put(new(**{k: v for k, v in fields.items() if k not in ("id", "created_at")},
                        ident=network["id"]))  # fmt: skip
    try:
        await c.call("networks", "delete", {"id": network["id"]})
    except BaseException:
        await store.drop(network["id"])
        raise
    return c.reply(None, status=204)


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/subnets"
    return [
        web.get(p, index),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.delete(p + "/{id}", delete),
    ]
