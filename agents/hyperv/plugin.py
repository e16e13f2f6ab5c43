"""Registers the Hyper-V driver by path, so pywinrm is imported only by agents that use it."""

from __future__ import annotations

from typing import Any

from hvmesh.plugins import hookimpl


@hookimpl
def hvmesh_register_drivers(register: Any) -> None:
    register(
        "hyperv",
        "hvmesh.agents.hyperv.driver:HypervDriver",
        requires=("winrm",),
        extra="hyperv",
        description="VMs on a Windows Hyper-V host, run remotely over WinRM through pywinrm",
    )
