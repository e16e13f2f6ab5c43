"""The agent runtime every driver runs under: one AgentRuntime per hypervisor host.

It registers the host record with the driver's inventory (its traits plus one per
driver capability, core/protocol/actions.py CAPABILITY_TRAITS), heartbeats, takes work from
the host's own durable queue (hvmesh.work.<host>), runs it through the driver and
reports the outcome as events (hvmesh.events.<host>.<server>). It never writes a server
record: the conductor applies the events. It also reports every instance's power state
now and then (the hypervisor's truth, for the conductor's power-state sync), answers
quick requests on hvmesh.agent.<host>.<op> (console log, live consoles), and on start and every
[compute] reconcile_interval removes instances the hypervisor runs that are no longer
this host's (agents/reconcile.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from hvmesh.agents import orphans, work_groups
from hvmesh.agents.consoles import ConsoleSessions
from hvmesh.agents.driver import ComputeDriver, DriverError, NodeInventory
from hvmesh.agents.heartbeats import Heartbeats
from hvmesh.agents.host_servers import HostServers
from hvmesh.agents.image_cache import ImageCache
from hvmesh.agents.reconcile import reconcile as reconcile_guests
from hvmesh.agents.reconcile import remove_failed_spawn
from hvmesh.agents.steps import IMAGE_STEPS, STEPS
from hvmesh.agents.upkeep import Job, Rounds
from hvmesh.agents.work_groups import WORK_ACK_WAIT, WORK_FETCH_WINDOW
from hvmesh.core import log
from hvmesh.core.bus import micro as bus
from hvmesh.core.bus.reconnects import signal_of
from hvmesh.core.bus.worker import PullWorker, Retry, durable_pull
from hvmesh.core.config import Config, state_dir
from hvmesh.core.protocol import states, subjects
from hvmesh.core.protocol.base import encode, now
from hvmesh.core.protocol.messages import AgentEvent, Work
from hvmesh.core.protocol.records import Host, Inventory
from hvmesh.core.state import dead_letters, store_cache
from hvmesh.core.state.store import CasConflict, Store
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

HOST_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_host_name(name: str) -> str:
    """Host names become NATS subject tokens and KV keys: letters, digits, - and _ only."""
    if not HOST_NAME.match(name):
        raise ValueError(
            f"host name {name!r} is not usable: use letters, digits, '-' and '_' (no dots)"
        )
    return name


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
    def __init__(
        self, nc: Client, cfg: Config, driver: ComputeDriver, beats: Heartbeats | None = None
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = cfg
        self.driver = driver
        self.host = check_host_name(driver.host)
        # The heartbeat group this host beats in: the process's (shared by its hosts), or
        # one of its own.
        self.beats = beats or Heartbeats(cfg.compute.heartbeat_interval)
        self.beats.plan([self.host])
        self._beating = False
        # Its work: from its group's consumer if its process runs it in one, else its own.
        self.work = work_groups.for_beats(nc, cfg, self.beats)
        self.work_group = self.work.group_of(self.host)
        self._slots = asyncio.Semaphore(cfg.compute.workers)  # its own items at once
        self.store: Store | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._upkeep: list[tuple[Rounds, Job]] = []
        self._worker: PullWorker[Work] | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._users: defaultdict[str, int] = defaultdict(int)  # work items holding a lock
        self._subs: list[Any] = []
        self._requests: dict[str, Callable[[Msg], Coroutine[Any, Any, None]]] = {}
        self._answering: set[asyncio.Task[None]] = set()
        self.images: ImageCache | None = None
        self.consoles = ConsoleSessions(self)
        self.host_servers: HostServers | None = None

    def image_cache_dir(self) -> Path:
        """One directory per host under [compute] image_cache_dir (or the state dir)."""
        base = self.cfg.compute.image_cache_dir or str(state_dir() / "images")
        return Path(base).expanduser() / self.host

    async def start(self) -> None:
        self.store = await store_cache.for_connection(self.nc, self.cfg.nats.replicas)
        self.host_servers = HostServers(self.store, self.host)
        self.images = ImageCache(
            self.js,
            self.store,
            self.image_cache_dir(),
            int(self.cfg.compute.image_cache_max_gb * 2**30),
        )
        self.driver.image_cache = self.images
        self.driver.power_listener = self.on_power_change
        self.driver.inventory_listener = self.register
        await self.driver.init_host()
        await self.register()
        await self.reconcile()
        await self.beats.join(self, self.store.heartbeats)
        self._beating = True
        # Quick requests to this host, on one subscription: its console log, the audit's
        # (agents/orphans.py), live consoles (agents/consoles.py).
        self._requests = {"console_log": self._console_log}
        self._requests |= orphans.handlers(self) | self.consoles.handlers()
        self._subs.append(await self.nc.subscribe(subjects.agent(self.host, "*"), cb=self._request))
        # Periodic upkeep in one loop per kind for all of this process's hosts.
        compute = self.cfg.compute
        upkeep = [
            (Rounds.of("power_sync", compute.sync_power_state_interval), self.report_power_states)
        ]
        if compute.reconcile_interval > 0:  # 0: only at start, above
            # Reconciled at start (above): the first round comes a whole interval later.
            interval = compute.reconcile_interval
            upkeep.append((Rounds.of("reconcile", interval, first_after=interval), self.reconcile))
        for rounds, job in upkeep:
            rounds.join(self.host, job)
            self._upkeep.append((rounds, job))
        if self.work_group:
            await self.work.join(self)
        else:
            await self._own_worker()
        LOG.info("agent.started", host=self.host, driver=self.driver.name)

    async def _own_worker(self) -> None:
        """The host's own durable consumer of its work, and the worker pulling from it."""
        retry = Retry.of(self.cfg.conductor)
        sub = await durable_pull(
            self.js,
            subjects.work(self.host),
            subjects.agent_durable(self.host),
            subjects.WORK_STREAM,
            WORK_ACK_WAIT,
            max_ack_pending=max(self.cfg.compute.workers * 4, 16),
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=retry.max_deliver,
        )
        keep = functools.partial(dead_letters.keep, self.js)
        self._worker = PullWorker(
            f"agent-{self.host}", sub, Work, self.handle, self.cfg.compute.workers,
            retry=retry, on_exhausted=self.give_up, keep=keep,
            fetch_window=WORK_FETCH_WINDOW, reconnects=signal_of(self.nc),
        )  # fmt: skip
        self._worker.start()

    async def stop(self) -> None:
        if self._beating:
            await self.beats.leave(self)
            self._beating = False
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.consoles.stop()
        for rounds, job in self._upkeep:
            await rounds.leave(self.host, job)
        self._upkeep = []
        await stop_tasks([*self._tasks, *self._answering])
        if self._worker is not None:
            await self._worker.stop()
        if self.work_group:
            await self.work.leave(self)
        await self.driver.cleanup_host()

    # --- host record and heartbeats -------------------------------------------------------

    async def register(self) -> None:
        """Create or refresh this host's record; allocations and status are left as they are.

        The traits are the hypervisor's own and one per capability the driver declares,
        as Nova's compute reports its driver's capabilities to placement.
        """
        assert self.store is not None
        node = await self.driver.get_inventory()
        inventories = inventories_for(node, self.cfg)
        az = self.cfg.compute.availability_zone
        traits = sorted(set(node.traits) | self.driver.capability_traits())

        def refresh(record: Host) -> Host:
            return msgspec.structs.replace(
                record,
                driver=self.driver.name,
                availability_zone=az,
                inventories=inventories,
                traits=traits,
                hypervisor_type=node.hypervisor_type,
                hypervisor_version=node.hypervisor_version,
                cpu_arch=node.cpu_arch,
                beat_key=self.beats.key_of(self.host),
                work_group=self.work_group,
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

    def healthy(self) -> bool:
        """Whether the host may say it is up: not while its hypervisor is unreachable."""
        return self.driver.healthy()

    # --- work ---------------------------------------------------------------------------------

    async def handle(self, work: Work, msg: Msg) -> None:
        """Run one work item for this host; acknowledged once its event is published."""
        if self.host_servers is not None:
            self.host_servers.seen(work.server_id)
        keepalive = asyncio.create_task(self._keep_in_progress(msg))
        try:
            async with self._slots, self.hold(work.server_id):
                if not await self.still_wanted(work):
                    LOG.info(
                        "agent.work_dropped", host=self.host, server=work.server_id, kind=work.kind
                    )
                    await msg.ack()
                    return
                event = await self.run(work)
                if work.kind == "spawn" and not event.ok:
                    await remove_failed_spawn(self.driver, self.host, work.server_id)
            await self.publish_event(event)
            await msg.ack()
        finally:
            keepalive.cancel()

    async def give_up(self, work: Work, msg: Msg, why: str) -> None:
        """Work that failed every delivery is reported failed: the conductor ends it."""
        message = f"agent {self.host} gave up on {work.kind} {why}"
        event = AgentEvent(kind=work.kind, server_id=work.server_id, host=self.host, ok=False)
        event.attempt, event.request_id, event.action = work.attempt, work.request_id, work.action
        event.message = message
        await self.publish_event(event)

    @contextlib.asynccontextmanager
    async def hold(self, server_id: str) -> AsyncIterator[None]:
        """Hold the server's lock: its work items, and reconcile, run one at a time."""
        self._users[server_id] += 1
        try:
            async with self._locks[server_id]:
                yield
        finally:
            # Forget the lock only when no other holder has or awaits it: a waiter just
            # woken by the release does not show it as locked yet, and a new lock handed
            # to a third one would let it run alongside that waiter.
            self._users[server_id] -= 1
            if not self._users[server_id]:
                del self._users[server_id]
                self._locks.pop(server_id, None)

    @staticmethod
    async def _keep_in_progress(msg: Msg) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(WORK_ACK_WAIT / 3)
                await msg.in_progress()

    async def still_wanted(self, work: Work) -> bool:
        """Whether the server still expects this work from this host.

        Work can wait in a dead agent's queue past its action's timeout; by then the
        conductor has moved on (rescheduled the build, failed the action), and doing it
        now would only leave an instance nobody tracks. A delete's destroy is always done;
        a destroy that is a step of an action (a shelve-offload) only while that action
        runs: one it gave up on has rolled the server back to this host, instance and all.
        """
        if work.kind == "destroy" and not work.action:
            return True
        assert self.store is not None
        entry = await self.store.servers.get(work.server_id)
        if entry is None:
            return False
        s = entry.value
        if work.request_id:
            return s.request_id == work.request_id
        return s.host == self.host and s.attempt == work.attempt and s.vm_state == "building"

    async def run(self, work: Work) -> AgentEvent:
        """Carry out one work item through the driver; the outcome becomes an event."""
        event = AgentEvent(
            kind=work.kind,
            server_id=work.server_id,
            host=self.host,
            attempt=work.attempt,
            request_id=work.request_id,
            action=work.action,
        )
        try:
            step = STEPS.get(work.kind)
            if step is None:
                raise ValueError(f"unknown work kind {work.kind}")
            event.result = await step(self.driver, work) or {}
            await self.track_images(work)
            event.power_state = await self.power_state(work.server_id)
        except Exception as exc:
            event.ok = False
            reason = str(exc)
            if isinstance(exc, NotImplementedError) and not reason:
                reason = f"the {self.driver.name} driver cannot {work.kind}"
            event.message = f"{type(exc).__name__}: {reason}"
            with contextlib.suppress(Exception):
                event.power_state = await self.power_state(work.server_id)
            LOG.warning(
                "agent.action_failed",
                host=self.host,
                server=work.server_id,
                kind=work.kind,
                error=event.message,
            )
        else:
            LOG.info("agent.action_done", host=self.host, server=work.server_id, kind=work.kind)
        event.at = now()
        return event

    async def track_images(self, work: Work) -> None:
        """Keep the image cache from evicting what this host's instances are built on."""
        if self.images is None:
            return
        if work.kind in IMAGE_STEPS and work.image is not None:
            props = work.server.image_properties if work.server is not None else {}
            await self.images.pin_instance(work.server_id, work.image, props)
        elif work.kind in ("destroy", "confirm_migration"):
            self.images.unpin(work.server_id)

    async def on_power_change(self, server_id: str, power_state: int) -> None:
        """The hypervisor announced a power-state change: report it at once."""
        await self.publish_event(
            AgentEvent(kind="power", server_id=server_id, host=self.host, power_state=power_state)
        )

    async def power_state(self, server_id: str) -> int:
        """The hypervisor's power state of an instance; NOSTATE when it has none here."""
        try:
            return (await self.driver.get_info(server_id)).power_state
        except DriverError:
            return states.NOSTATE

    # --- power-state sync, reconcile, quick requests -------------------------------------

    async def report_power_states(self) -> None:
        """One "power" event per instance this host should run, with what the hypervisor says.

        The conductor compares each with the server record (Nova's _sync_power_states).
        A server assigned here that the hypervisor does not run is reported as NOSTATE.
        Each report carries when the agent started looking (`at`), before it read anything:
        the conductor ignores one older than the server record's last change.
        """
        assert self.host_servers is not None
        seen = now()
        running = set(await self.driver.list_instances())
        mine = await self.host_servers.placed_here(running)
        for s in mine:
            power = await self.power_state(s.id) if s.id in running else states.NOSTATE
            await self.publish_event(
                AgentEvent(kind="power", server_id=s.id, host=self.host, power_state=power, at=seen)
            )

    async def reconcile(self) -> None:
        """Remove instances this hypervisor runs that no server places here (agents/reconcile.py)."""
        assert self.store is not None
        await reconcile_guests(self.store, self.driver, self.host, self.hold, self.images)

    async def _request(self, msg: Msg) -> None:
        """Hand a quick request to its handler, on its own task: a slow one (an orphan's
        destroy) holds up no other. A request no handler knows goes unanswered."""
        handler = self._requests.get(msg.subject.rsplit(".", 1)[-1])
        if handler is None:
            return
        task = asyncio.create_task(handler(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _console_log(self, msg: Msg) -> None:
        try:
            body = msgspec.json.decode(msg.data or b"{}")
            server_id = str(body["server_id"])
            length = body.get("length")
            output = await self.driver.get_console_output(server_id)
            if length:
                output = "".join(output.splitlines(keepends=True)[-int(length) :])
            await msg.respond(encode({"output": output}))
        except DriverError as exc:
            await bus.reply_error(self.nc, msg, 404, str(exc))
        except NotImplementedError:
            message = f"the {self.driver.name} driver has no console log"
            await bus.reply_error(self.nc, msg, 409, message)
        except Exception as exc:
            LOG.exception("agent.console_log_failed", host=self.host)
            await bus.reply_error(self.nc, msg, 500, str(exc))

    async def publish_event(self, event: AgentEvent) -> None:
        msg_id = f"{event.server_id}:{event.kind}:{event.attempt}:{event.host}:{event.request_id}"
        if event.kind == "power":  # a report, not a step: each one counts
            msg_id += f":{event.at}"
        await self.js.publish(
            subjects.events(self.host, event.server_id),
            encode(event),
            headers={"Nats-Msg-Id": msg_id},
        )
