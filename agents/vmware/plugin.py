"""Registers the VMware driver by path, so pyvmomi is imported only by agents that use it."""

from __future__ import annotations

from typing import Any

from hvmesh.plugins import hookimpl


@hookimpl
def hvmesh_register_drivers(register: Any) -> None:
    register(
        "vmware",
        "hvmesh.agents.vmware.driver:VmwareDriver",
        requires=("pyVmomi",),
        extra="vmware",
        description="VMs in a vCenter cluster or on a standalone ESXi host, through pyvmomi",
    )
