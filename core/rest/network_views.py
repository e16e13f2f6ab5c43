"""What the network API's handlers share: the token's NATS requests and Neutron's shapes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hvmesh.core.bus import micro
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.rest.errors import RestError
from hvmesh.core.rest.identity import Authenticated

CALL_TIMEOUT = 30.0  # seconds one request on NATS may take
PREFIX = "/network/v2.0"
# A subnet's id is derived from its network's: hvmesh keeps one subnet per network.
SUBNET_NAMESPACE = uuid.UUID("6f1c1bb2-3d52-5d0e-9b64-8f1f7d4b2a10")
MAX_PAGES = 1000  # NATS pages one listing walks at most
SERVER_LOOKUPS = 16  # servers.get requests one port listing has in flight at most


def subnet_id(network_id: str) -> str:
    return str(uuid.uuid5(SUBNET_NAMESPACE, network_id))


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Neutron(Authenticated):
    """One network API request: its token and base URL."""

    async def call(self, resource: str, verb: str, body: dict[str, Any]) -> Any:
        """A request on hvmesh.api.<resource>.<verb> as the token's NATS user."""
        return await micro.call(
            self.token.nc, subjects.api(resource, verb), body, timeout=CALL_TIMEOUT
        )

    async def every(self, resource: str) -> list[dict[str, Any]]:
        """Every record `<resource>.list` shows the caller, page after page."""
        out: list[dict[str, Any]] = []
        body: dict[str, Any] = {}
        for _ in range(MAX_PAGES):
            reply = await self.call(resource, "list", body)
            out.extend(reply[resource])
            more = reply.get(f"{resource}_links") or []
            if not more:
                return out
            body = {"marker": more[0]["marker"]}
        raise RestError(503, f"{resource}: more than {MAX_PAGES} pages to walk")

    def values(self, name: str) -> list[str]:
        """A query parameter's values (Neutron filters may repeat: any of them matches)."""
        return [v for v in self.request.query.getall(name, []) if v != ""]

    def reply(self, body: Any, status: int = 200) -> web.Response:
        if body is None:
            return web.Response(status=status)
        return web.json_response(body, status=status)

    def listing(self, key: str, items: list[dict[str, Any]]) -> web.Response:
        """A collection after Neutron's filters, `fields`, `limit`, `marker` and `sort_dir`."""
        if self.request.query.get("sort_dir", "asc").lower() == "desc":
            items = list(reversed(items))
        marker = self.request.query.get("marker")
        if marker:
            at = next((i for i, item in enumerate(items) if item["id"] == marker), None)
            if at is None:
                raise RestError(400, f"marker {marker} not found")
            items = items[at + 1 :]
        out: dict[str, Any] = {}
        raw = self.request.query.get("limit")
        if raw:
            try:
                limit = int(raw)
            except ValueError:
                raise RestError(400, f"limit: {raw!r} is not an integer") from None
            if limit < 0:
                raise RestError(400, f"limit: must be 0 or more, not {limit}")
            if 0 < limit < len(items):
                items = items[:limit]
                query = [(k, v) for k, v in self.request.query.items() if k != "marker"]
                query.append(("marker", items[-1]["id"]))
                href = f"{self.base}{PREFIX}/{key}?{urlencode(query)}"
                out[f"{key}_links"] = [{"rel": "next", "href": href}]
        out[key] = [self.only_fields(item) for item in items]
        return self.reply(out)

    def only_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        fields = self.values("fields")
        return {k: v for k, v in item.items() if k in fields} if fields else item


def truth(raw: str, name: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise RestError(400, f"{name}: {raw!r} is not a boolean")


def matches(c: Neutron, item: dict[str, Any], filters: Iterable[str]) -> bool:
    """Whether `item` passes the request's filters on these attributes."""
    for name in filters:
        wanted = c.values(name)
        if not wanted:
            continue
        value = item.get(name)
        if isinstance(value, bool):
            if value not in {truth(w, name) for w in wanted}:
                return False
        elif str(value if value is not None else "") not in wanted:
            return False
    return True


def stamps(t: float | None) -> dict[str, Any]:
    """Neutron's standard attributes."""
    return {
        "created_at": iso(t),
        "updated_at": iso(t),
        "revision_number": 0,
        "tags": [],
        "description": "",
    }


def network_view(c: Neutron, n: dict[str, Any]) -> dict[str, Any]:
    """An hvmesh network (or a network still without its subnet) as Neutron shows it."""
    out: dict[str, Any] = {
        "id": n["id"],
        "name": n["name"],
        "tenant_id": n["project"],
        "project_id": n["project"],
        "status": "ACTIVE",
        "admin_state_up": True,
        "shared": n.get("shared", False),
        "router:external": False,
        "subnets": [subnet_id(n["id"])] if n.get("cidr") else [],
        "mtu": n.get("mtu", 1500),
        "availability_zones": [],
        "availability_zone_hints": [],
        "port_security_enabled": False,
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "is_default": False,
        "l2_adjacency": True,
        **stamps(n.get("created_at")),
    }
    if c.is_admin:
        out["provider:network_type"] = n.get("network_type", "flat")
        out["provider:physical_network"] = n.get("physical_network", "physnet1")
        out["provider:segmentation_id"] = n.get("segmentation_id")
    return out


def subnet_view(n: dict[str, Any]) -> dict[str, Any]:
    """An hvmesh network's CIDR, gateway, DNS and allocation range as its one subnet."""
    pools = []
    if n.get("allocation_start") and n.get("allocation_end"):
        pools = [{"start": n["allocation_start"], "end": n["allocation_end"]}]
    return {
        "id": subnet_id(n["id"]),
        "name": n["name"],
        "network_id": n["id"],
        "tenant_id": n["project"],
        "project_id": n["project"],
        "ip_version": 4,
        "cidr": n["cidr"],
        "gateway_ip": n.get("gateway"),
        "allocation_pools": pools,
        "dns_nameservers": list(n.get("dns_nameservers") or []),
        "host_routes": [],
        "enable_dhcp": False,
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "subnetpool_id": None,
        "segment_id": None,
        "service_types": [],
        **stamps(n.get("created_at")),
    }


def port_view(c: Neutron, p: dict[str, Any], server: dict[str, Any] | None) -> dict[str, Any]:
    """An hvmesh port as Neutron shows it; `server` is the one it is bound to, if any."""
    out: dict[str, Any] = {
        "id": p["id"],
        "name": p.get("name", ""),
        "network_id": p["network_id"],
        "tenant_id": p["project"],
        "project_id": p["project"],
        "mac_address": p["mac"],
        "fixed_ips": [{"subnet_id": subnet_id(p["network_id"]), "ip_address": p["ip"]}],
        "device_id": p.get("server_id") or "",
        "device_owner": "",
        "status": p.get("status", "DOWN"),
        "admin_state_up": True,
        "security_groups": [],
        "allowed_address_pairs": [],
        "extra_dhcp_opts": [],
        "port_security_enabled": False,
        "binding:vnic_type": "normal",
        **stamps(p.get("created_at")),
    }
    if p.get("server_id"):
        zone = (server or {}).get("availability_zone") or "nova"
        out["device_owner"] = f"compute:{zone}"
    if c.is_admin:
        host = (server or {}).get("host") or ""
        out["binding:host_id"] = host
        out["binding:vif_type"] = "bridge" if host else "unbound"
        out["binding:profile"] = {}
        out["binding:vif_details"] = {}
    return out


async def servers_of(c: Neutron, ports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The servers these ports are bound to, by id (those the caller may see)."""
    found: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(SERVER_LOOKUPS)

    async def look(server_id: str) -> None:
        # A server gone meanwhile: its port shows without its zone and host.
        async with gate:
            with contextlib.suppress(errors.NotFound):
                found[server_id] = (await c.call("servers", "get", {"id": server_id}))["server"]

    await asyncio.gather(*(look(s) for s in {p["server_id"] for p in ports if p.get("server_id")}))
    return found
