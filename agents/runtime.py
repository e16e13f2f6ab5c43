"""The agent runtime every driver runs under: one AgentRuntime per hypervisor host.

It registers the host record with the driver's inventory, heartbeats, takes work from
the host's own durable queue (hvmesh.work.<host>), runs it through the driver and
reports the outcome as events (hvmesh.events.<host>.<server>). It never writes a server
record: the conductor applies the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections import defaultdict

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hvmesh.agents.driver import ComputeDriver, NodeInventory
from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.models import AgentEvent, Heartbeat, Host, Inventory, Work, encode, now
from hvmesh.core.store import WORK_STREAM, CasConflict, Store
from hvmesh.core.worker import PullWorker

LOG = log.get_logger(__name__)

HOST_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
WORK_ACK_WAIT = 300.0


def check_host_name(name: str) -> str:
    """Host names become NATS subject tokens and KV keys: letters, digits, - and _ only."""
    if not HOST_NAME.match(name):
        raise ValueError(
            f"host name {name!r} is not usable: use letters, digits, '-' and '_' (no dots)"
        )
    return name


def work_subject(host: str) -> str:
    return f"hvmesh.work.{host}"


def event_subject(host: str, server_id: str) -> str:
    return f"hvmesh.events.{host}.{server_id}"


def inventories_for(node: NodeInventory, cfg: Config) -> dict[str, Inventory]:
    """Placement inventories from what the hypervisor has and the [compute] settings."""
    c = cfg.compute
    custom = {rc: Inventory(total=n, max_unit=n) for rc, n in node.resources.items()}
    return custom | {
        "VCPU": Inventory(
            total=node.vcpus,
            reserved=c.reserved_host_cpus,
            max_unit=node.vcpus,
            allocation_ratio=c.cpu_allocation_ratio,
        ),
        "MEMORY_MB": Inventory(
            total=node.memory_mb,
            reserved=c.reserved_host_memory_mb,
            max_unit=node.memory_mb,
            allocation_ratio=c.ram_allocation_ratio,
        ),
        "DISK_GB": Inventory(
            total=node.local_gb,
            reserved=c.reserved_host_disk_gb,
            max_unit=node.local_gb,
            allocation_ratio=c.disk_allocation_ratio,
        ),
    }


class AgentRuntime:
    def __init__(self, nc: Client, cfg: Config, driver: ComputeDriver) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = cfg
        self.driver = driver
        self.host = check_host_name(driver.host)
        self.agent_id = uuid.uuid4().hex[:12]
        self.store: Store | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._worker: PullWorker[Work] | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def start(self) -> None:
        self.store = await Store(self.js).open()
        await self.driver.init_host()
        await self.register()
        await self.heartbeat()
        sub = await self.js.pull_subscribe(
            work_subject(self.host),
            durable=f"agent-{self.host}",
            stream=WORK_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=WORK_ACK_WAIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=max(self.cfg.compute.workers * 4, 16),
            ),
        )
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        self._worker = PullWorker(
            f"agent-{self.host}", sub, Work, self._handle, self.cfg.compute.workers
        )
        self._worker.start()
        LOG.info("agent.started", host=self.host, driver=self.driver.name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._worker is not None:
            await self._worker.stop()
        await self.driver.cleanup_host()

    # --- host record and heartbeats -------------------------------------------------------

    async def register(self) -> None:
        """Create or refresh this host's record; allocations and status are left as they are."""
        assert self.store is not None
        node = await self.driver.get_inventory()
        inventories = inventories_for(node, self.cfg)
        az = self.cfg.compute.availability_zone

        def refresh(record: Host) -> Host:
            return msgspec.structs.replace(
                record,
                driver=self.driver.name,
                availability_zone=az,
                inventories=inventories,
                traits=sorted(set(node.traits)),
                hypervisor_type=node.hypervisor_type,
                hypervisor_version=node.hypervisor_version,
                cpu_arch=node.cpu_arch,
                updated_at=now(),
            )

        while True:
            if await self.store.hosts.mutate(self.host, refresh) is not None:
                return
            fresh = refresh(Host(name=self.host, driver=self.driver.name))
            try:
                await self.store.hosts.create(self.host, fresh)
                return
            except CasConflict:
                continue  # created meanwhile by another start: refresh it instead

    async def heartbeat(self) -> None:
        assert self.store is not None
        await self.store.heartbeats.put(
            self.host, Heartbeat(host=self.host, at=now(), agent_id=self.agent_id)
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.compute.heartbeat_interval)
            try:
                await self.heartbeat()
            except Exception:
                LOG.exception("agent.heartbeat_failed", host=self.host)

    # --- work ---------------------------------------------------------------------------------

    async def _handle(self, work: Work, msg: Msg) -> None:
        keepalive = asyncio.create_task(self._keep_in_progress(msg))
        try:
            async with self._locks[work.server_id]:
                event = await self.run(work)
            await self.publish_event(event)
            await msg.ack()
        finally:
            keepalive.cancel()
            if not self._locks[work.server_id].locked():
                self._locks.pop(work.server_id, None)

    @staticmethod
    async def _keep_in_progress(msg: Msg) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(WORK_ACK_WAIT / 3)
                await msg.in_progress()

    async def run(self, work: Work) -> AgentEvent:
        """Carry out one work item through the driver; the outcome becomes an event."""
        event = AgentEvent(
            kind=work.kind,
            server_id=work.server_id,
            host=self.host,
            attempt=work.attempt,
            request_id=work.request_id,
        )
        try:
            if work.kind == "spawn":
                if work.server is None:
                    raise ValueError("spawn work without a server")
                await self.driver.spawn(work.server, work.image)
                event.power_state = (await self.driver.get_info(work.server_id)).power_state
            elif work.kind == "destroy":
                await self.driver.destroy(work.server_id)
            else:
                raise ValueError(f"unknown work kind {work.kind}")
        except Exception as exc:
            event.ok = False
            event.message = f"{type(exc).__name__}: {exc}"
            LOG.warning(
                "agent.action_failed",
                host=self.host,
                server=work.server_id,
                kind=work.kind,
                error=event.message,
            )
        else:
            LOG.info("agent.action_done", host=self.host, server=work.server_id, kind=work.kind)
        return event

    async def publish_event(self, event: AgentEvent) -> None:
        msg_id = f"{event.server_id}:{event.kind}:{event.attempt}:{event.host}:{event.request_id}"
        await self.js.publish(
            event_subject(self.host, event.server_id),
            encode(event),
            headers={"Nats-Msg-Id": msg_id},
        )
