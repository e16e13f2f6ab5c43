"""Registers the libvirt driver by path, so libvirt-python is imported only by agents that use it."""

from __future__ import annotations

from typing import Any

from hvmesh.plugins import hookimpl


@hookimpl
def hvmesh_register_drivers(register: Any) -> None:
    register(
        "libvirt",
        "hvmesh.agents.libvirt.driver:LibvirtDriver",
        requires=("libvirt",),
        extra="libvirt",
        description="guests under libvirtd (KVM, or QEMU's software emulation)",
    )
