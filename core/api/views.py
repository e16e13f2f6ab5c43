"""How the API shows a server: the Nova-style view of a server record, addresses included."""

from __future__ import annotations

import msgspec

from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Server


def addresses(s: Server) -> dict[str, list[dict]]:
    """Nova's "addresses": network name -> its addresses on that network."""
    out: dict[str, list[dict]] = {}
    for v in s.network_info:
        out.setdefault(v.network_name, []).append(
            {"addr": v.ip, "version": 4, "mac_addr": v.mac, "port_id": v.port_id}
        )
    return out


def server_view(s: Server, caller: Caller) -> dict:
    view = {
        "id": s.id,
        "name": s.name,
        "status": states.status(s.vm_state, s.task_state),
        "vm_state": s.vm_state,
        "task_state": s.task_state,
        "power_state": s.power_state,
        "flavor": {"id": s.flavor.id, "name": s.flavor.name},
        "image": {"id": s.image_id, "name": s.image_name},
        # The flavor as the server was built with it, the image properties it booted
        # with and its scheduler hints (the compute REST API's 2.47, 2.98 and 2.100).
        "flavor_details": {
            "vcpus": s.flavor.vcpus,
            "ram_mb": s.flavor.ram_mb,
            "disk_gb": s.flavor.disk_gb,
            "extra_specs": s.flavor.extra_specs,
        },
        "image_properties": s.image_properties,
        "scheduler_hints": msgspec.to_builtins(s.scheduler_hints),
        "availability_zone": s.availability_zone,
        "project": s.project,
        "user": s.user,
        "metadata": s.metadata,
        "reservation_id": s.reservation_id,
        "addresses": addresses(s),
        "key_name": s.key_name,
        "config_drive": s.config_drive,
        "locked": s.locked_by is not None,
        "locked_by": s.locked_by,
        "locked_reason": s.locked_reason,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "launched_at": s.launched_at,
    }
    if s.fault is not None:
        view["fault"] = msgspec.to_builtins(s.fault)
    if caller.is_admin:
        view["host"] = s.host
    return view
