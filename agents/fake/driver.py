"""The fake driver: an in-memory hypervisor with configurable delays and failure rate.

It is what `hvmesh up --fake-hosts N` and the tests run; thousands of fake hosts fit in
one process. Settings come from the [fake] config section.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

from hvmesh.agents.driver import ComputeDriver, DriverError, InstanceInfo, NodeInventory
from hvmesh.core import states
from hvmesh.core.models import Image, Server, parse_counts, pci_class
from hvmesh.plugins import hookimpl


class FakeDriver(ComputeDriver):
    name: ClassVar[str] = "fake"
    capabilities: ClassVar[dict[str, bool]] = {"supports_multiattach": False}

    def __init__(self, host: str, config: Any) -> None:
        super().__init__(host, config)
        self.fake = config.fake
        self.instances: dict[str, int] = {}  # server id -> power state
        self._rng = random.Random()

    async def get_inventory(self) -> NodeInventory:
        return NodeInventory(
            vcpus=self.fake.vcpus,
            memory_mb=self.fake.memory_mb,
            local_gb=self.fake.local_gb,
            hypervisor_type="fake",
            hypervisor_version="1.0",
            cpu_arch=self.fake.cpu_arch,
            traits=list(self.fake.traits),
            resources={
                pci_class(alias): n
                for alias, n in parse_counts(
                    ",".join(self.fake.pci_devices), "[fake] pci_devices"
                ).items()
            },
        )

    async def list_instances(self) -> list[str]:
        return list(self.instances)

    async def get_info(self, server_id: str) -> InstanceInfo:
        if server_id not in self.instances:
            raise DriverError(f"instance {server_id} not found on {self.host}")
        return InstanceInfo(power_state=self.instances[server_id])

    async def spawn(self, server: Server, image: Image | None) -> None:
        if server.id in self.instances:
            return
        if self.fake.spawn_delay:
            await asyncio.sleep(self.fake.spawn_delay)
        if self.fake.fail_rate and self._rng.random() < self.fake.fail_rate:
            raise DriverError(f"simulated spawn failure on {self.host}")
        self.instances[server.id] = states.RUNNING

    async def destroy(self, server_id: str) -> None:
        if self.fake.destroy_delay:
            await asyncio.sleep(self.fake.destroy_delay)
        self.instances.pop(server_id, None)


@hookimpl
def hvmesh_register_drivers(register: Any) -> None:
    register("fake", FakeDriver)
