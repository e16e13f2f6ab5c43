"""How the compute API shows a server: hvmesh's server view in Nova's shape, by microversion."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from hvmesh.core.protocol import errors
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


def hostname(name: str, ident: str) -> str:
    """The hostname the metadata service gives the guest: the name as one DNS label."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    label = re.sub(r"-{2,}", "-", label).strip("-")[:63].rstrip("-")
    return label or f"server-{ident[:8]}"


def embedded_flavor(c: Compute, s: dict[str, Any]) -> dict[str, Any]:
    """The flavor a server was built with: a link before 2.47, its copy from 2.47 (extra
    specs for whoever may read them, as Nova's default policy: everyone)."""
    flavor = s.get("flavor") or {}
    flavor_id = str(flavor.get("id") or "")
    if not c.at_least(2, 47):
        return {"id": flavor_id, "links": c.links("flavors", flavor_id)[1:]}
    details = s.get("flavor_details") or {}
    return {
        "original_name": flavor.get("name"),
        "vcpus": details.get("vcpus"),
        "ram": details.get("ram_mb"),
        "disk": details.get("disk_gb"),
        "ephemeral": 0,
        "swap": 0,
        "extra_specs": dict(details.get("extra_specs") or {}),
    }


def image_ref(c: Compute, s: dict[str, Any]) -> dict[str, Any] | str:
    """The image as an id and link, "" for none; from 2.98 with the properties the server
    booted with."""
    image_id = str((s.get("image") or {}).get("id") or "")
    if not image_id:
        return ""
    out: dict[str, Any] = {"id": image_id, "links": c.links("images", image_id)[1:]}
    if c.at_least(2, 98):
        out["properties"] = dict(s.get("image_properties") or {})
    return out


def scheduler_hints(s: dict[str, Any]) -> dict[str, Any]:
    """The hints given at boot as Nova keeps them, each a list (those not given left out)."""
    hints = s.get("scheduler_hints") or {}
    return {k: v if isinstance(v, list) else [v] for k, v in hints.items() if v not in (None, [])}


def detail(c: Compute, s: dict[str, Any], groups: list[str] | None = None) -> dict[str, Any]:
    """A server as GET /servers/detail shows it at the request's microversion; with
    `groups`, as GET /servers/{id} (and update and rebuild) show it from 2.71."""
    out: dict[str, Any] = {
        **brief(c, s),
        "status": s["status"],
        "tenant_id": s["project"],
        "user_id": s["user"],
        "created": iso(s["created_at"]),
        "updated": iso(s.get("updated_at") or s["created_at"]),
        "hostId": host_id(s["project"], s.get("host")),
        "addresses": addresses(s),
        "flavor": embedded_flavor(c, s),
        "image": image_ref(c, s),
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
                    "OS-EXT-SRV-ATTR:kernel_id": "",
                    "OS-EXT-SRV-ATTR:ramdisk_id": "",
                    "OS-EXT-SRV-ATTR:root_device_name": None,
                    "OS-EXT-SRV-ATTR:user_data": None,
                }
            )
    if (c.is_admin and c.at_least(2, 3)) or c.at_least(2, 90):
        out["OS-EXT-SRV-ATTR:hostname"] = hostname(s["name"], s["id"])
    if c.at_least(2, 9):
        out["locked"] = bool(s.get("locked"))
    if c.at_least(2, 16) and c.is_admin:
        out["host_status"] = "UNKNOWN" if s.get("host") else ""
    if c.at_least(2, 19):
        out["description"] = None
    if c.at_least(2, 26):
        out["tags"] = []
    if c.at_least(2, 63):
        out["trusted_image_certificates"] = None
    if c.at_least(2, 71) and groups is not None:
        out["server_groups"] = groups
    if c.at_least(2, 73):
        out["locked_reason"] = s.get("locked_reason")
    if c.at_least(2, 96):
        out["pinned_availability_zone"] = s.get("availability_zone")
    if c.at_least(2, 100):
        out["scheduler_hints"] = scheduler_hints(s)
    return out


async def shown(c: Compute, s: dict[str, Any]) -> dict[str, Any]:
    """A server as GET /servers/{id}, update and rebuild show it: from 2.71 with the
    server group it joined at boot, while that group exists."""
    if not c.at_least(2, 71):
        return detail(c, s)
    group = (s.get("scheduler_hints") or {}).get("group")
    groups: list[str] = []
    if group:
        try:
            await c.call("server_groups", "get", {"id": group})
            groups = [group]
        except errors.NotFound:
            pass
    return detail(c, s, groups)
