"""Network v2.0 networks, extensions and version discovery, on hvmesh.api.networks.*."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.rest.calls import json_body
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.network_views import PREFIX, Neutron, matches, network_view
from hvmesh.core.rest.pending_networks import PendingNetworks, as_network, new

LOG = log.get_logger(__name__)

# The extensions whose attributes hvmesh shows (clients ask before using one).
EXTENSIONS = {
    "provider": ("Provider Network", "Expose mapping of virtual networks to physical networks"),
    "net-mtu": ("Network MTU", "Provides MTU attribute for a network resource."),
    "binding": ("Port Binding", "Expose port bindings of a virtual port to external application"),
    "external-net": ("Neutron external network", "Adds external network attribute to network resource."),
    "project-id": ("project_id field enabled", "Extension that indicates that project_id field is enabled."),
}  # fmt: skip
NETWORK_FILTERS = ("id", "name", "shared", "router:external", "project_id", "tenant_id", "mtu",
                   "status", "admin_state_up", "provider:network_type",
                   "provider:physical_network", "provider:segmentation_id")  # fmt: skip
NETWORK_TYPES = ("flat", "vlan")


async def versions(request: web.Request) -> web.Response:
    """GET /network: the one version, v2.0 (no token needed)."""
    href = f"{request.url.origin()}{PREFIX}/"
    version = {"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": href}]}
    return web.json_response({"versions": [version]})


async def resources(request: web.Request) -> web.Response:
    """GET /network/v2.0: the collections served."""
    base = f"{request.url.origin()}{PREFIX}"
    out = [
        {"name": name, "collection": f"{name}s", "links": [{"rel": "self", "href": f"{base}/{name}s"}]}
        for name in ("network", "subnet", "port")
    ]  # fmt: skip
    return web.json_response({"resources": out})


def extension_view(alias: str) -> dict[str, Any]:
    name, description = EXTENSIONS[alias]
    return {
        "alias": alias,
        "name": name,
        "description": description,
        "updated": "2013-01-01T10:00:00-00:00",
        "links": [],
    }


async def extensions(request: web.Request) -> web.Response:
    Neutron(request)
    return web.json_response({"extensions": [extension_view(a) for a in EXTENSIONS]})


async def extension(request: web.Request) -> web.Response:
    Neutron(request)
    alias = request.match_info["alias"]
    if alias not in EXTENSIONS:
        raise RestError(404, f"Extension with alias {alias} does not exist")
    return web.json_response({"extension": extension_view(alias)})


async def all_networks(c: Neutron) -> list[dict[str, Any]]:
    """Every network the caller may see: hvmesh's, then (for the admin) those with no subnet."""
    found = await c.every("networks")
    if c.is_admin:
        known = {n["id"] for n in found}
        pending = await PendingNetworks(c.token.nc).all()
        found += [as_network(p) for p in pending if p.id not in known]
    return found


async def find(c: Neutron, ref: str) -> dict[str, Any]:
    """The network with this id (or hvmesh's name), a network with no subnet, or 404."""
    try:
        return dict((await c.call("networks", "get", {"id": ref}))["network"])
    except errors.NotFound:
        if not c.is_admin:
            raise RestError(404, f"Network {ref} could not be found.") from None
    pending = await PendingNetworks(c.token.nc).get(ref)
    if pending is None:
        raise RestError(404, f"Network {ref} could not be found.")
    return as_network(pending)


async def index(request: web.Request) -> web.Response:
    c = Neutron(request)
    views = [network_view(c, n) for n in await all_networks(c)]
    return c.listing("networks", [v for v in views if matches(c, v, NETWORK_FILTERS)])


async def show(request: web.Request) -> web.Response:
    c = Neutron(request)
    network = network_view(c, await find(c, request.match_info["id"]))
    return c.reply({"network": c.only_fields(network)})


def _whole(value: Any, what: str, least: int, most: int) -> int:
    """An integer (or its digits, as the openstack CLI sends them) from least to most."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RestError(400, f"{what}: an integer from {least} to {most}, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise RestError(400, f"{what}: an integer from {least} to {most}, not {value!r}") from None
    if not least <= number <= most:
        raise RestError(400, f"{what}: an integer from {least} to {most}, not {number}")
    return number


def _attributes(c: Neutron, body: dict[str, Any]) -> dict[str, Any]:
    """The hvmesh attributes of a POST /networks body; 400 naming what hvmesh cannot do."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RestError(400, "network.name: hvmesh networks need a (unique) name")
    for key in ("project_id", "tenant_id"):
        if body.get(key) not in (None, c.token.project):
            raise RestError(400, f"network.{key}: a network belongs to its creator's project")
    for key, allowed in (("admin_state_up", True), ("router:external", False)):
        if body.get(key, allowed) is not allowed:
            raise RestError(400, f"network.{key}: hvmesh networks are always {allowed}")
    if body.get("segments"):
        raise RestError(400, "network.segments: hvmesh networks have one segment")
    attrs: dict[str, Any] = {"shared": body.get("shared", False)}
    if not isinstance(attrs["shared"], bool):
        raise RestError(400, "network.shared: true or false")
    mtu = body.get("mtu")
    if mtu is not None:
        attrs["mtu"] = _whole(mtu, "network.mtu", 68, 9216)
    kind = body.get("provider:network_type")
    if kind is not None:
        if kind not in NETWORK_TYPES:
            raise RestError(400, f"provider:network_type: one of flat, vlan, not {kind!r}")
        attrs["network_type"] = kind
    physical = body.get("provider:physical_network")
    if physical is not None:
        if not isinstance(physical, str) or not physical:
            raise RestError(400, "provider:physical_network: a physical network's name")
        attrs["physical_network"] = physical
    segment = body.get("provider:segmentation_id")
    if segment is not None:
        attrs["segmentation_id"] = _whole(segment, "provider:segmentation_id", 1, 4094)
    vlan = attrs.get("network_type") == "vlan"
    if vlan != ("segmentation_id" in attrs):
        raise RestError(
            400, "provider:segmentation_id: given with provider:network_type vlan, and only then"
        )
    return {"name": name, **attrs}


async def create(request: web.Request) -> web.Response:
    """POST /networks: a network whose subnet (its CIDR) comes with POST /subnets."""
    c = Neutron(request)
    body = await json_body(request, "network")
    attrs = _attributes(c, body)
    if not c.is_admin:
        raise RestError(403, "only the admin makes networks (they map to physical networks)")
    if any(n["name"] == attrs["name"] for n in await all_networks(c)):
        raise RestError(409, f"a network named {attrs['name']} exists already")
    pending = new(project=c.token.project, **attrs)
    await PendingNetworks(c.token.nc).put(pending)
    LOG.info("rest.network_recorded", network=pending.id, name=pending.name)
    return c.reply({"network": network_view(c, as_network(pending))}, status=201)


async def delete(request: web.Request) -> web.Response:
    c = Neutron(request)
    network = await find(c, request.match_info["id"])
    store = PendingNetworks(c.token.nc)
    if network.get("cidr") is None:
        await store.drop(network["id"])
        return c.reply(None, status=204)
    await c.call("networks", "delete", {"id": network["id"]})
    return c.reply(None, status=204)


def routes() -> list[web.AbstractRouteDef]:
    p = f"{PREFIX}/networks"
    return [
        web.get("/network", versions),
        web.get("/network/", versions),
        web.get(PREFIX, resources),
        web.get(f"{PREFIX}/", resources),
        web.get(f"{PREFIX}/extensions", extensions),
        web.get(f"{PREFIX}/extensions/{{alias}}", extension),
        web.get(p, index),
        web.post(p, create),
        web.get(p + "/{id}", show),
        web.delete(p + "/{id}", delete),
    ]
