"""What the Ironic driver reads from and writes to a node: its inventory, power state, instance_info and config drive.

Pure functions over openstacksdk's Node resources (read as plain attributes), so they
run anywhere without Ironic. As in Nova's ironic driver, a node is a provider with one
unit of its resource class (CUSTOM_ and the class upper-cased, every other character a
'_') and no VCPU, MEMORY_MB or DISK_GB: a bare-metal flavor asks for that one unit.
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path
from typing import Any

from hvmesh.agents.driver import NodeInventory
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Image, Server

#: Marks a node's instance as one hvmesh deployed (instance_info; Ironic clears it on
#: undeploy). Nodes deployed by anything else are left alone and are not schedulable.
OWNER_KEY = "hvmesh_server_id"

#: Ironic's power states -> Nova's.
POWER_STATES = {
    "power on": states.RUNNING,
    "power off": states.SHUTDOWN,
    "soft power off": states.SHUTDOWN,
    "rebooting": states.RUNNING,
    "soft rebooting": states.RUNNING,
}

#: Provision states a deploy ends in, and those where it still runs.
DEPLOYED = "active"
DEPLOY_FAILED = "deploy failed"
DEPLOYING = {"deploying", "wait call-back", "deploy wait"}
AVAILABLE = "available"
CLEAN_FAILED = "clean failed"


def resource_class(name: str | None) -> str:
    """Nova's normalization: baremetal-gold -> CUSTOM_BAREMETAL_GOLD ("" for none)."""
    if not name:
        return ""
    norm = "".join(c if c.isascii() and c.isalnum() else "_" for c in name.upper())
    return norm if norm.startswith("CUSTOM_") else f"CUSTOM_{norm}"


def owned_instance(node: Any) -> str | None:
    """The server id of the instance hvmesh deployed on `node`, or None."""
    instance = getattr(node, "instance_id", None)
    info = getattr(node, "instance_info", None) or {}
    if instance and info.get(OWNER_KEY) == instance:
        return str(instance)
    return None


def schedulable(node: Any) -> bool:
    """Whether a new server may land on the node: available, not in maintenance, and
    holding no instance."""
    return (
        node.provision_state == AVAILABLE
        and not node.is_maintenance
        and not getattr(node, "instance_id", None)
    )


def inventory(node: Any) -> NodeInventory:
    """One unit of the node's resource class while it is schedulable or holds hvmesh's
    instance (whose allocation uses it); none otherwise (maintenance, cleaning, enrolled,
    deployed by someone else), so nothing is placed there. Traits: the node's."""
    props = node.properties or {}
    rc = resource_class(node.resource_class)
    usable = rc and (schedulable(node) or owned_instance(node) is not None)
    return NodeInventory(
        vcpus=0,
        memory_mb=0,
        local_gb=0,
        hypervisor_type="ironic",
        hypervisor_version="1",
        cpu_arch=str(props.get("cpu_arch") or "x86_64"),
        resources={rc: 1} if usable else {},
        traits=sorted(t for t in (node.traits or []) if t.isupper()),
    )


def power_state(node: Any) -> int:
    return POWER_STATES.get(node.power_state or "", states.NOSTATE)


def capabilities(server: Server) -> dict[str, str]:
    """`capabilities:NAME=VALUE` extra specs of the flavor, as Ironic's instance capabilities."""
    specs = server.flavor.extra_specs
    return {k.split(":", 1)[1]: v for k, v in specs.items() if k.startswith("capabilities:")}


def required_traits(server: Server) -> list[str]:
    specs = server.flavor.extra_specs
    return sorted(
        k.split(":", 1)[1] for k, v in specs.items() if k.startswith("trait:") and v == "required"
    )


def instance_info(server: Server, image: Image | None, node: Any) -> dict[str, Any]:
    """What Ironic deploys: the image (its `image_source` property, a URL Ironic can
    fetch, else the image id for a Glance-backed Ironic), the root size (the flavor's
    disk, else the node's), the flavor's capabilities and required traits."""
    props = node.properties or {}
    root_gb = server.flavor.disk_gb or int(props.get("local_gb") or 0)
    info: dict[str, Any] = {
        OWNER_KEY: server.id,
        "display_name": server.name,
        "root_gb": str(root_gb),
    }
    if image is not None:
        info["image_source"] = image.properties.get("image_source") or image.id
        info["image_disk_format"] = image.disk_format
        if image.checksum:
            info["image_os_hash_algo"] = "sha256"
            info["image_os_hash_value"] = image.checksum
    caps = capabilities(server)
    if caps:
        info["capabilities"] = caps
    traits = required_traits(server)
    if traits:
        info["traits"] = traits
    return info


def pack_config_drive(iso: Path) -> str:
    """A config drive ISO as Ironic takes it: gzipped, then base64."""
    return base64.b64encode(gzip.compress(iso.read_bytes())).decode("ascii")
