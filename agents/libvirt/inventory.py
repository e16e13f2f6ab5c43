"""What the host has, as libvirt reports it: CPUs, memory, the storage pool's size, the
hypervisor and its version, and PCI devices by alias."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from hvmesh.agents.driver import NodeInventory
from hvmesh.agents.libvirt import disks, pci
from hvmesh.core.config import Config

#: Traits every host of this driver has: it hot-plugs interfaces.
TRAITS = ("COMPUTE_NET_ATTACH_INTERFACE",)


def version_text(number: int) -> str:
    """libvirt's version number (major * 1,000,000 + minor * 1,000 + release) as text."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def host_arch(capabilities_xml: str) -> str:
    return ET.fromstring(capabilities_xml).findtext("host/cpu/arch", "x86_64")


def hypervisor_type(conn: libvirt.virConnect) -> str:
    kind = conn.getType()
    return "QEMU" if kind.upper() == "QEMU" else kind


def node_inventory(conn: libvirt.virConnect, cfg: Config) -> NodeInventory:
    _model, memory_mb, cpus, *_ = conn.getInfo()
    pool = disks.ensure_pool(conn, cfg)
    arch = host_arch(conn.getCapabilities())
    return NodeInventory(
        vcpus=cpus,
        memory_mb=memory_mb,
        local_gb=disks.pool_capacity_gb(pool),
        hypervisor_type=hypervisor_type(conn),
        hypervisor_version=version_text(conn.getVersion()),
        cpu_arch=arch,
        resources=pci.counts(conn, pci.parse_aliases(cfg.libvirt.pci_alias)),
        traits=list(TRAITS),
    )
