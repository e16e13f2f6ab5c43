"""The scheduler service "hvmesh-scheduler": answers hvmesh.sched.select with a claimed host.

It keeps its own inventory index, asks the configured scheduler implementation for
hosts best first, and claims on them in that order until one claim holds. A lost race
(a compare-and-set conflict or a host that filled up meanwhile) moves on to the next.
"""

from __future__ import annotations

import socket
import time

import msgspec
from nats.aio.client import Client

from hvmesh.core import log
from hvmesh.core.bus.micro import Caller, MicroService
from hvmesh.core.config import Config
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.errors import Forbidden
from hvmesh.core.protocol.messages import RequestSpec, Selection
from hvmesh.core.protocol.version import VERSION
from hvmesh.core.state import placement
from hvmesh.core.state.inventory import Index
from hvmesh.core.state.store import Store
from hvmesh.plugins import manager

LOG = log.get_logger(__name__)

MAX_ROUNDS = 64  # select-and-claim rounds before giving up on a request


class SchedulerService:
    def __init__(self, nc: Client, cfg: Config, registry: manager.Registry | None = None) -> None:
        self.nc = nc
        self.cfg = cfg
        self.registry = registry or manager.configured(cfg)
        self.index = Index(service_down_time=cfg.DEFAULT.service_down_time)
        ctx = self.registry.context(cfg, self.index)
        factory = self.registry.pick("schedulers", [cfg.scheduler.driver])[0]
        self.scheduler = factory(ctx)
        self.store: Store | None = None
        self.service = MicroService(
            nc,
            name=subjects.SCHEDULER_SERVICE,
            version=VERSION,
            description="Places servers on hosts: filters, weighers and claims.",
            metadata={"driver": cfg.scheduler.driver, "host": socket.gethostname()},
            concurrency=cfg.scheduler.workers,
        )
        self.service.endpoint("select", subjects.SCHED_SELECT, self.select, RequestSpec)

    async def start(self) -> None:
        self.store = await Store(self.nc.jetstream()).open()
        await self.index.start(self.store)
        await self.service.start()
        LOG.info("scheduler.started", driver=self.cfg.scheduler.driver)

    async def stop(self) -> None:
        await self.service.stop()
        await self.index.stop()

    async def select(self, caller: Caller, spec: RequestSpec) -> Selection:
        if not caller.is_admin:
            raise Forbidden("only hvmesh services may ask the scheduler")
        assert self.store is not None
        started = time.perf_counter()
        held = self.index.consumers.get(spec.server_id)
        if held in spec.ignore_hosts or spec.requested_host not in (None, held):
            held = None  # a move: the server's allocation there is not the one asked for
        if held is not None:  # a retried request whose claim already landed
            existing = await placement.claim(
                self.store, held, spec.server_id, spec.flavor.resources(), attempts=1
            )
            if existing.claimed:
                return Selection(host=held)
        resources = spec.flavor.resources()
        tried: list[str] = []
        last_reason = "no host passed the filters"
        for _ in range(MAX_ROUNDS):
            round_spec = msgspec.structs.replace(spec, ignore_hosts=[*spec.ignore_hosts, *tried])
            names = await self.scheduler.select(round_spec)
            if not names:
                break
            for i, name in enumerate(names):
                result = await placement.claim(
                    self.store,
                    name,
                    spec.server_id,
                    resources,
                    self.cfg.scheduler.max_claim_attempts,
                    known=self.index.hosts.get(name),
                    build=True,
                )
                if result.entry is not None:
                    self.index.apply_host(result.entry, name, result.entry.revision)
                if result.claimed:
                    LOG.debug(
                        "scheduler.selected",
                        server=spec.server_id,
                        host=name,
                        tried=len(tried) + i + 1,
                        ms=round((time.perf_counter() - started) * 1000, 2),
                    )
                    return Selection(
                        host=name, alternates=names[i + 1 : i + 1 + spec.num_alternates]
                    )
                tried.append(name)
                last_reason = f"{name}: {result.reason}"
        LOG.info("scheduler.no_valid_host", server=spec.server_id, reason=last_reason)
        return Selection(host=None, reason=last_reason)
