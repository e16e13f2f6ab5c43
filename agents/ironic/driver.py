"""The Ironic compute driver: one agent fronts an Ironic service, each node of its conductor group a host of its own, and spawning a server deploys its node.

As Nova's ironic driver: a node is a provider with one unit of its resource class
(nodes.py); spawn writes the node's instance_info, validates it, provisions it to
`active` with the server's config drive and polls (every [ironic] poll_interval, up to
deploy_timeout) until it is `active` or `deploy failed` (then a DriverError: the
conductor reschedules); destroy provisions it `deleted` and waits until it is
`available` again. The agent's node drivers share one connection (client.Link), whose
periodic node listing is also its health probe and notices changes made in Ironic
(maintenance, power). Bare metal cannot pause, suspend, resize, migrate or snapshot:
those raise NotImplementedError, and the capabilities say so.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from hvmesh.agents.driver import ComputeDriver, DriverError, InstanceInfo, NodeInventory
from hvmesh.agents.ironic import nodes
from hvmesh.agents.ironic.client import Link
from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Image, Server

LOG = log.get_logger(__name__)

#: Seconds a power action may take before it counts as failed.
POWER_TIMEOUT = 120.0


def probe_interval(config: Config) -> float:
    return min(config.compute.heartbeat_interval, 10.0)


class IronicDriver(ComputeDriver):
    name: ClassVar[str] = "ironic"
    capabilities: ClassVar[dict[str, bool]] = {
        "supports_pause": False,
        "supports_suspend": False,
        "supports_resize": False,
        "supports_attach_interface": False,
        "supports_live_migration": False,
        "supports_snapshot": False,
        "supports_evacuate": False,
        "supports_migrate_to_same_host": False,
        "supports_multiattach": False,
        "supports_pci_passthrough": False,
    }

    def __init__(self, host: str, config: Config, link: Link | None = None) -> None:
        super().__init__(host, config)
        self.cfg = config.ironic
        #: The Ironic node this driver is the provider of: its uuid is the host name.
        self.node_id = host
        self.link = link or Link(self.cfg, host, probe_interval(config))

    # --- providers ----------------------------------------------------------------------------

    @classmethod
    async def node_drivers(cls, host: str, config: Config) -> list[ComputeDriver]:
        """One driver per node of [ironic] conductor_group (every node when unset), named
        by the node's uuid, sharing one link to Ironic. Nodes enrolled later appear when
        the agent restarts."""
        link = Link(config.ironic, host, probe_interval(config))
        await link.acquire()
        try:
            found = await link.list_nodes()
        finally:
            await link.release()
        if not found:
            group = config.ironic.conductor_group or "(any)"
            raise DriverError(f"Ironic has no node in conductor group {group}")
        return [cls(str(n.id), config, link=link) for n in sorted(found, key=lambda n: n.id)]

    # --- connection ---------------------------------------------------------------------------

    async def init_host(self) -> None:
        await self.link.acquire()
        try:
            node = await self._node()
        except BaseException:
            await self.link.release()
            raise
        self.link.subscribe(self.node_id, self._changed, node)
        LOG.info(
            "ironic.init_host",
            host=self.host,
            node=node.name or node.id,
            provision_state=node.provision_state,
            resource_class=node.resource_class,
        )

    async def cleanup_host(self) -> None:
        self.link.unsubscribe(self.node_id)
        await self.link.release()

    def healthy(self) -> bool:
        return self.link.healthy

    async def _changed(self, before: Any, after: Any) -> None:
        """The link's listing saw this node change: report what the agent tracks."""
        if nodes.inventory(before) != nodes.inventory(after):
            await self.inventory_changed()
        server_id = nodes.owned_instance(after)
        if server_id and nodes.power_state(before) != nodes.power_state(after):
            await self.emit_power(server_id, nodes.power_state(after))

    async def _node(self) -> Any:
        from openstack import exceptions as sdk

        try:
            return await self.link.call(
                lambda bm: bm.get_node(self.node_id), f"reading node {self.node_id}"
            )
        except sdk.NotFoundException:
            raise DriverError(f"Ironic has no node {self.node_id}") from None

    async def _mine(self, server_id: str) -> Any:
        node = await self._node()
        if nodes.owned_instance(node) != server_id:
            raise DriverError(f"instance {server_id} not found on node {self.node_id}")
        return node

    async def _wait(self, done: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """Read the node every poll_interval until done(node); DriverError after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            node = await self._node()
            if done(node):
                return node
            if loop.time() >= deadline:
                raise DriverError(
                    f"{what}: node {self.node_id} is still {node.provision_state} "
                    f"(power {node.power_state}) after {timeout:g}s"
                )
            await asyncio.sleep(self.cfg.poll_interval)

    # --- inventory, listing -------------------------------------------------------------------

    async def get_inventory(self) -> NodeInventory:
        return nodes.inventory(await self._node())

    async def list_instances(self) -> list[str]:
        owner = nodes.owned_instance(await self._node())
        return [owner] if owner else []

    async def get_info(self, server_id: str) -> InstanceInfo:
        return InstanceInfo(power_state=nodes.power_state(await self._mine(server_id)))

    # --- spawn, destroy, rebuild --------------------------------------------------------------

    async def spawn(self, server: Server, image: Image | None) -> None:
        node = await self._node()
        owner = nodes.owned_instance(node)
        if owner == server.id and node.provision_state == nodes.DEPLOYED:
            LOG.info("ironic.spawn_exists", server=server.id, node=self.node_id)
            await self._power(node, "power on")
            return
        try:
            if owner != server.id or node.provision_state not in nodes.DEPLOYING:
                await self._claim(node, server, image)
                await self._provision(server, "active")
            node = await self._deployed(server.id)
            await self._power(node, "power on")
        except Exception as exc:
            # Leave the node as it was: undeployed and released (only if it is this
            # server's: a node holding another instance is not touched).
            LOG.warning("ironic.spawn_failed", server=server.id, node=self.node_id, error=str(exc))
            try:
                await self.destroy(server.id)
            except Exception as cleanup:
                LOG.warning("ironic.spawn_cleanup_failed", server=server.id, error=str(cleanup))
            raise
        LOG.info("ironic.spawned", server=server.id, node=self.node_id)

    async def _claim(self, node: Any, server: Server, image: Image | None) -> None:
        """Write the server into the node (instance_uuid, instance_info) and validate."""
        holder = node.instance_id
        if holder and holder != server.id:
            raise DriverError(f"node {self.node_id} holds instance {holder}, not {server.id}")
        if holder and node.provision_state != nodes.AVAILABLE:
            raise DriverError(
                f"node {self.node_id}: the deploy of {server.id} is {node.provision_state}"
            )
        if not holder and not nodes.schedulable(node):
            why = "in maintenance" if node.is_maintenance else node.provision_state
            raise DriverError(f"node {self.node_id} is not available for {server.id}: {why}")
        info = nodes.instance_info(server, image, node)
        await self.link.call(
            lambda bm: bm.update_node(
                self.node_id, instance_id=server.id, instance_info=info, retry_on_conflict=False
            ),
            f"writing {server.id} into node {self.node_id}",
        )
        await self.link.call(
            lambda bm: bm.validate_node(self.node_id, required=("boot", "deploy", "power")),
            f"validating node {self.node_id} for {server.id}",
        )

    async def _provision(self, server: Server, target: str) -> None:
        with tempfile.TemporaryDirectory(prefix="hvmesh-ironic-") as tmp:
            iso = await self.write_config_drive(server, Path(tmp) / "config-2.iso")
            drive = await asyncio.to_thread(nodes.pack_config_drive, iso)
        await self.link.call(
            lambda bm: bm.set_node_provision_state(self.node_id, target, config_drive=drive),
            f"provisioning node {self.node_id} to {target} for {server.id}",
        )
        LOG.info("ironic.provisioning", server=server.id, node=self.node_id, target=target)

    async def _deployed(self, server_id: str) -> Any:
        def done(node: Any) -> bool:
            return node.provision_state in (nodes.DEPLOYED, nodes.DEPLOY_FAILED)

        node = await self._wait(done, self.cfg.deploy_timeout, f"deploying {server_id}")
        if node.provision_state == nodes.DEPLOY_FAILED:
            raise DriverError(
                f"node {self.node_id}: the deploy of {server_id} failed: {node.last_error}"
            )
        return node

    async def destroy(self, server_id: str) -> None:
        node = await self._node()
        if nodes.owned_instance(node) != server_id:
            return  # gone, never made, or not hvmesh's
        if node.provision_state in nodes.DEPLOYING:
            node = await self._wait(
                lambda n: n.provision_state not in nodes.DEPLOYING,
                self.cfg.deploy_timeout,
                f"waiting for the deploy of {server_id} to end before deleting it",
            )
        if node.provision_state == nodes.AVAILABLE:  # claimed, never provisioned
            await self.link.call(
                lambda bm: bm.patch_node(
                    self.node_id,
                    [{"op": "remove", "path": "/instance_uuid"},
                     {"op": "remove", "path": "/instance_info"}],
                ),
                f"releasing node {self.node_id} from {server_id}",
            )  # fmt: skip
            return
        await self.link.call(
            lambda bm: bm.set_node_provision_state(self.node_id, "deleted"),
            f"undeploying {server_id} from node {self.node_id}",
        )
        done = {nodes.AVAILABLE, nodes.CLEAN_FAILED, "manageable"}
        node = await self._wait(
            lambda n: n.provision_state in done,
            self.cfg.deploy_timeout,
            f"undeploying {server_id}",
        )
        if node.provision_state == nodes.CLEAN_FAILED:
            raise DriverError(
                f"node {self.node_id}: cleaning after {server_id} failed: {node.last_error}"
            )
        LOG.info("ironic.destroyed", server=server_id, node=self.node_id)

    async def rebuild(self, server: Server, image: Image | None) -> None:
        """Provision `rebuild` with the new image and config drive; where the node holds
        no instance of the server (an evacuation's destination), a spawn."""
        node = await self._node()
        if nodes.owned_instance(node) != server.id or node.provision_state != nodes.DEPLOYED:
            await self.spawn(server, image)
            return
        info = nodes.instance_info(server, image, node)
        await self.link.call(
            lambda bm: bm.update_node(self.node_id, instance_info=info, retry_on_conflict=False),
            f"writing the new image of {server.id} into node {self.node_id}",
        )
        await self._provision(server, "rebuild")
        node = await self._deployed(server.id)
        await self._power(node, "power on")
        LOG.info("ironic.rebuilt", server=server.id, node=self.node_id)

    # --- power --------------------------------------------------------------------------------

    async def _power(self, node: Any, target: str, wait_for: str | None = None) -> None:
        """Ask Ironic for `target` unless the node is already there, then wait until its
        power state is `wait_for` (default: `target`)."""
        want = wait_for or target
        if node.power_state == want and target == want:
            return
        await self.link.call(
            lambda bm: bm.set_node_power_state(self.node_id, target),
            f"{target} of node {self.node_id}",
        )
        await self._wait(lambda n: n.power_state == want, POWER_TIMEOUT, f"{target} of node")

    async def power_off(self, server_id: str) -> None:
        """A soft power off (ACPI) first; a hard one when Ironic cannot or it fails."""
        node = await self._mine(server_id)
        if node.power_state == "power off":
            return
        try:
            await self._power(node, "soft power off", "power off")
        except DriverError as exc:
            LOG.warning("ironic.soft_power_off_failed", server=server_id, error=str(exc))
            await self._power(await self._mine(server_id), "power off")
        LOG.info("ironic.powered_off", server=server_id, node=self.node_id)

    async def power_on(self, server: Server) -> None:
        await self._power(await self._mine(server.id), "power on")
        LOG.info("ironic.powered_on", server=server.id, node=self.node_id)

    async def reboot(self, server: Server, reboot_type: str) -> None:
        """SOFT: Ironic's soft reboot (falling back to a hard one); HARD: a reboot, which
        also starts a node that is off."""
        if reboot_type not in ("SOFT", "HARD"):
            raise DriverError(f"reboot type {reboot_type!r} is not SOFT or HARD")
        node = await self._mine(server.id)
        if reboot_type == "SOFT" and node.power_state == "power on":
            try:
                await self._power(node, "soft rebooting", "power on")
                LOG.info("ironic.rebooted", server=server.id, type="SOFT")
                return
            except DriverError as exc:
                LOG.warning("ironic.soft_reboot_failed", server=server.id, error=str(exc))
        await self._power(node, "rebooting", "power on")
        LOG.info("ironic.rebooted", server=server.id, type="HARD")

    async def get_console_output(self, server_id: str) -> str:
        """Ironic serves consoles live (serial over IPMI, VNC), never a log to read back."""
        await self._mine(server_id)
        raise NotImplementedError("Ironic keeps no console log of a node")
