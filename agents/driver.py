"""The driver contract: what a hypervisor driver implements, shaped after Nova's ComputeDriver.

A driver holds only what is specific to its hypervisor. Everything else (registering the
host, heartbeats, taking work from the queue, reporting events) is the agent runtime's,
shared by every driver. Methods a driver cannot do raise NotImplementedError, which the
runtime reports as a failed action.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from hvmesh.core.config import Config
from hvmesh.core.models import Image, Server


class DriverError(Exception):
    """The hypervisor refused or failed an operation; the message says why."""


class NodeInventory(msgspec.Struct, kw_only=True):
    """What the hypervisor has, before reserved amounts and allocation ratios."""

    vcpus: int
    memory_mb: int
    local_gb: int
    hypervisor_type: str
    hypervisor_version: str = ""
    cpu_arch: str = "x86_64"
    #: Custom resource classes (PCI devices as CUSTOM_PCI_<ALIAS>, ...) and how many.
    resources: dict[str, int] = msgspec.field(default_factory=dict)
    traits: list[str] = msgspec.field(default_factory=list)


class InstanceInfo(msgspec.Struct, kw_only=True):
    power_state: int


class ComputeDriver:
    """Base class of every hypervisor driver."""

    #: Registered name (`hvmesh agent --driver NAME`).
    name: ClassVar[str] = ""
    #: What this driver can do, as Nova's driver capabilities.
    capabilities: ClassVar[dict[str, bool]] = {}

    def __init__(self, host: str, config: Config) -> None:
        self.host = host
        self.config = config

    async def init_host(self) -> None:
        """Connect to the hypervisor; called once before anything else."""

    async def cleanup_host(self) -> None:
        """Release connections; called once at shutdown."""

    async def get_inventory(self) -> NodeInventory:
        raise NotImplementedError

    async def list_instances(self) -> list[str]:
        """Server ids of the instances this hypervisor runs."""
        raise NotImplementedError

    async def get_info(self, server_id: str) -> InstanceInfo:
        """Power state of one instance; DriverError if it does not exist."""
        raise NotImplementedError

    async def spawn(self, server: Server, image: Image | None) -> None:
        """Create and start the instance. Must be idempotent for a server id."""
        raise NotImplementedError

    async def destroy(self, server_id: str) -> None:
        """Stop and remove the instance; no error if it is already gone."""
        raise NotImplementedError
