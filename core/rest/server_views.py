"""How the compute API shows a server: hvmesh's server view in Nova's shape, by microversion."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from hvmesh.core.rest.calls import Compute


def iso(t: float | None) -> str | None:
    """Nova's time format (seconds, Z)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_id(project: str, host: str | None) -> str:
    """Nova's hostId: the same for a project's servers on one host, naming no host."""
    return hashlib.sha224(f"{project}{host}".encode()).hexdigest() if host else ""


def addresses(view: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {
        network: [
            {
                "addr": a["addr"],
                "version": a.get("version", 4),
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": a.get("mac_addr"),
            }
            for a in entries
        ]
        for network, entries in (view.get("addresses") or {}).items()
    }


def brief(c: Compute, s: dict[str, Any]) -> dict[str, Any]:
    return {"id": s["id"], "name": s["name"], "links": c.links("servers", s["id"])}


def detail(c: Compute, s: dict[str, Any]) -> dict[str, Any]:
    """A server as GET /servers/{id} shows it at the request's microversion."""
    flavor_id = str((s.get("flavor") or {}).get("id") or "")
    image_id = str((s.get("image") or {}).get("id") or "")
    out: dict[str, Any] = {
        **brief(c, s),
        "status": s["status"],
        "tenant_id": s["project"],
        "user_id": s["user"],
        "created": iso(s["created_at"]),
        "updated": iso(s.get("updated_at") or s["created_at"]),
        "hostId": host_id(s["project"], s.get("host")),
        "addresses": addresses(s),
        "flavor": {"id": flavor_id, "links": c.links("flavors", flavor_id)[1:]},
        "image": {"id": image_id, "links": c.links("images", image_id)[1:]} if image_id else "",
        "key_name": s.get("key_name"),
        "metadata": s.get("metadata") or {},
        "accessIPv4": "",
        "accessIPv6": "",
        "config_drive": "True" if s.get("config_drive") else "",
        "progress": 0,
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": s.get("availability_zone") or "",
        "OS-EXT-STS:vm_state": s.get("vm_state"),
        "OS-EXT-STS:task_state": s.get("task_state"),
        "OS-EXT-STS:power_state": s.get("power_state", 0),
        "OS-SRV-USG:launched_at": iso(s.get("launched_at")),
        "OS-SRV-USG:terminated_at": None,
        "os-extended-volumes:volumes_attached": [],
    }
    if s.get("fault"):
        fault = s["fault"]
        out["fault"] = {
            "code": fault.get("code", 500),
            "message": fault.get("message", ""),
            "created": iso(fault.get("created_at")) or out["updated"],
        }
    if c.is_admin:
        out["OS-EXT-SRV-ATTR:host"] = s.get("host")
        out["OS-EXT-SRV-ATTR:hypervisor_hostname"] = s.get("host")
        out["OS-EXT-SRV-ATTR:instance_name"] = s["id"]
        if c.at_least(2, 3):
            out.update(
                {
                    "OS-EXT-SRV-ATTR:reservation_id": s.get("reservation_id"),
                    "OS-EXT-SRV-ATTR:launch_index": 0,
                    "OS-EXT-SRV-ATTR:hostname": s["name"],
                    "OS-EXT-SRV-ATTR:kernel_id": "",
                    "OS-EXT-SRV-ATTR:ramdisk_id": "",
                    "OS-EXT-SRV-ATTR:root_device_name": None,
                    "OS-EXT-SRV-ATTR:user_data": None,
                }
            )
    if c.at_least(2, 9):
        out["locked"] = bool(s.get("locked"))
    if c.at_least(2, 16) and c.is_admin:
        out["host_status"] = "UNKNOWN" if s.get("host") else ""
    if c.at_least(2, 19):
        out["description"] = None
    if c.at_least(2, 26):
        out["tags"] = []
    return out
