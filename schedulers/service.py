"""The scheduler service "hvmesh-scheduler": answers hvmesh.sched.select with a claimed host.

It keeps its own inventory index, asks the configured scheduler implementation for
hosts best first, and claims on them in that order until one claim holds. A lost race
(a compare-and-set conflict or a host that filled up meanwhile) moves on to the next.
Each claim also re-checks the enabled filters' claim-time rules on the host record, and
a request's claim key holds it to one host across retries (core/state/leases.py).
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
from hvmesh.core.protocol.errors import Forbidden, HvmeshError, PluginFailed
from hvmesh.core.protocol.messages import RequestSpec, Selection
from hvmesh.core.protocol.version import VERSION
from hvmesh.core.state import leases, placement
from hvmesh.core.state.inventory import Index
from hvmesh.core.state.store import Store
from hvmesh.plugins import manager
from hvmesh.schedulers.claim_checks import ClaimChecks
from hvmesh.schedulers.faults import PluginRaised

LOG = log.get_logger(__name__)


class SchedulerService:
    def __init__(self, nc: Client, cfg: Config, registry: manager.Registry | None = None) -> None:
        self.nc = nc
        self.cfg = cfg
        self.registry = registry or manager.configured(cfg)
        self.index = Index(service_down_time=cfg.DEFAULT.service_down_time)
        ctx = self.registry.context(cfg, self.index)
        self.claim_checks = ClaimChecks(
            ctx.filters, cfg, lambda name: self.registry.origin("filters", name)
        )
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
        self.store = await Store(self.nc.jetstream(), replicas=self.cfg.nats.replicas).open()
        await self.index.start(self.store)
        await self.service.start()
        LOG.info("scheduler.started", driver=self.cfg.scheduler.driver)

    async def stop(self) -> None:
        await self.service.stop()
        await self.index.stop()

    async def _ordered(self, spec: RequestSpec) -> list[str]:
        """The implementation's hosts for `spec`; a plugin that raises fails this request only,
        with a PluginFailed naming it and the plugin that registered it."""
        try:
            return await self.scheduler.select(spec)
        except PluginRaised as exc:
            origins = "; ".join(self.registry.origin(exc.table, n) for n in exc.names)
            message = f"{exc.kind} {exc.name} ({origins}) raised {_describe(exc.error)}"
            LOG.exception("scheduler.plugin_failed", server=spec.server_id, error=message)
        except HvmeshError:
            raise
        except Exception as exc:
            driver = self.cfg.scheduler.driver
            origin = self.registry.origin("schedulers", driver)
            message = f"scheduler driver {driver} ({origin}) raised {_describe(exc)}"
            LOG.exception("scheduler.plugin_failed", server=spec.server_id, error=message)
        raise PluginFailed(message)

    async def select(self, caller: Caller, spec: RequestSpec) -> Selection:
        if not caller.is_admin:
            raise Forbidden("only hvmesh services may ask the scheduler")
        assert self.store is not None
        started = time.perf_counter()
        held = self.index.consumers.get(spec.server_id)
        if held in spec.ignore_hosts or spec.requested_host not in (None, held):
            held = None  # a move: the server's allocation there is not the one asked for
        resources = spec.flavor.resources()
        check = self.claim_checks.for_request(spec)
        store = self.store

        async def pick(tried: list[str]) -> list[str]:
            if held is not None and not tried:
                return [held]  # a retried request whose claim already landed
            return await self._ordered(
                msgspec.structs.replace(spec, ignore_hosts=[*spec.ignore_hosts, *tried])
            )

        async def claim(name: str) -> placement.ClaimResult:
            result = await placement.claim(
                store,
                name,
                spec.server_id,
                resources,
                self.cfg.scheduler.max_claim_attempts,
                known=self.index.hosts.get(name),
                build=True,
                check=check,
            )
            if result.entry is not None:
                self.index.apply_host(result.entry, name, result.entry.revision)
            return result

        # An alternate is claimed later without the scheduler: offered only when no
        # claim-time check applies to the request, as none would be made then.
        placed = await leases.place(
            store,
            spec.claim_key,
            spec.server_id,
            pick,
            claim,
            expires_at=spec.expires_at,
            num_alternates=spec.num_alternates if check is None else 0,
        )
        if placed.host is None:
            LOG.info("scheduler.no_valid_host", server=spec.server_id, reason=placed.reason)
            return Selection(host=None, reason=placed.reason, superseded=placed.superseded)
        LOG.debug(
            "scheduler.selected",
            server=spec.server_id,
            host=placed.host,
            tried=placed.tried,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return Selection(host=placed.host, alternates=placed.alternates)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
