"""A site's side of its link to the core: it joins, and runs the requests the core queued for it.

Run by the API service of a site ([site] name set). The site's HVMESH_SITE_INBOX sources
the core's HVMESH_SITE_REQUESTS (only this site's subject) across the leaf-node link, so
requests the core accepted while the link was down arrive once it is back. A create is
booted through the site's own servers.create with the ids the core chose, once (a
client token made of the request's id); a delete, update or action goes to the site's
own endpoint; each as the caller the core checked. A request that arrives after its
deadline is not run; one the site refuses (an unknown flavor, no quota, an action the
server's state does not allow) is not either: both are reported to the core
(subjects.SITE_OUTCOME), which shows a create's servers in ERROR with the reason. A
message is acknowledged only once its request has run or its outcome has reached the
core, so nothing is lost on a crash or a cut (an action delivered again after a crash
between running and acknowledging runs again: at least once, as the site's own
clients' retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from hvmesh.core import log
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.requests import IdOnly
from hvmesh.core.api.server_actions import ServerActions
from hvmesh.core.api.servers import ServerEndpoints
from hvmesh.core.bus import micro
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.action_requests import ServerAction
from hvmesh.core.protocol.requests import ServerUpdate
from hvmesh.core.protocol.sites import Site, SiteJoin, SiteOutcome, SiteRequest
from hvmesh.core.protocol.version import VERSION
from hvmesh.core.state import sites as site_streams
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

JOIN_EVERY = 30.0  # seconds between joins once joined (the core keeps the zones current)
RETRY = 2.0  # seconds before a failed join, or a request whose outcome could not be sent
FETCH_WAIT = 5.0  # seconds one fetch of the inbox waits for requests
CORE_TIMEOUT = 5.0  # seconds a request to the core may take
ACK_WAIT = 120.0  # seconds a taken request may take before it is delivered again
MAX_MESSAGE = 4096  # characters of a refusal's reason the core keeps (SiteOutcome.message)


class SiteInbox:
    """Join the core, then boot the inbox's requests through `servers`."""

    def __init__(self, api: ApiContext, servers: ServerEndpoints, actions: ServerActions) -> None:
        self.api = api
        self.servers = servers
        self.actions = actions
        self.site = api.cfg.site.name
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        js, replicas = self.api.js, self.api.cfg.nats.replicas
        await site_streams.ensure(js, site_streams.inbox_stream(self.site, replicas))
        try:
            await js.consumer_info(subjects.SITE_INBOX_STREAM, subjects.SITE_INBOX_DURABLE)
        except NotFoundError:
            await js.add_consumer(
                subjects.SITE_INBOX_STREAM,
                ConsumerConfig(
                    durable_name=subjects.SITE_INBOX_DURABLE,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=ACK_WAIT,
                ),
            )
        self._tasks += [asyncio.create_task(self._join()), asyncio.create_task(self._take())]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)

    async def _join(self) -> None:
        zones = self.api.cfg.site.zones()
        join = SiteJoin(site=Site(name=self.site, availability_zones=zones, version=VERSION))
        reached: bool | None = None  # logged when it changes, not at every try
        while True:
            try:
                await micro.call(self.api.nc, subjects.SITE_JOIN, join, timeout=CORE_TIMEOUT)
            except Exception as exc:
                if reached is not False:
                    error = str(exc) or type(exc).__name__
                    LOG.warning("site.core_unreachable", site=self.site, error=error)
                reached = False
                await asyncio.sleep(RETRY)
                continue
            if reached is not True:
                LOG.info("site.joined", site=self.site, zones=zones)
            reached = True
            await asyncio.sleep(JOIN_EVERY)

    async def _take(self) -> None:
        sub = await self.api.js.pull_subscribe_bind(
            subjects.SITE_INBOX_DURABLE, stream=subjects.SITE_INBOX_STREAM
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(10, timeout=FETCH_WAIT)
                except TimeoutError:
                    continue
                except Exception:
                    LOG.exception("site.inbox_fetch_failed")
                    await asyncio.sleep(RETRY)
                    continue
                for msg in msgs:
                    await self._one(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _one(self, msg: Any) -> None:
        try:
            request = msgspec.json.decode(msg.data, type=SiteRequest)
        except msgspec.DecodeError:
            LOG.error("site.bad_request", subject=msg.subject)
            await msg.term()
            return
        try:
            await self._run(request)
        except Exception:
            LOG.exception("site.request_retried", request=request.request_id)
            await msg.nak(delay=RETRY)
            return
        await msg.ack()

    async def _run(self, request: SiteRequest) -> None:
        """Run one request, or report why not; raises if neither is done (retried)."""
        if request.deadline and time.time() > request.deadline:
            await self._report(
                request, "expired", "the request reached the site after its deadline"
            )
            return
        caller = Caller(
            project=request.project,
            user=request.user,
            is_admin=request.is_admin,
            version=(1, 1),
            roles=tuple(request.roles),
        )
        try:
            await self._do(request, caller)
        except (errors.BadRequest, errors.NotFound, errors.Conflict, errors.Forbidden) as exc:
            await self._report(request, "failed", f"site {self.site}: {exc.message}")
            return
        except msgspec.ValidationError as exc:
            await self._report(request, "failed", f"site {self.site}: {exc}")
            return
        LOG.info("site.request_done", request=request.request_id, kind=request.kind)

    async def _do(self, request: SiteRequest, caller: Caller) -> None:
        if request.create is not None:
            token = f"site:{request.request_id}"  # once, however often it is delivered
            create = msgspec.structs.replace(request.create, client_token=token)
            await self.servers.create_given(caller, create, request.server_ids)
        elif request.kind == "delete":
            # Gone already (deleted here, or a delete delivered again): done.
            with contextlib.suppress(errors.NotFound):
                await self.servers.server_delete(caller, IdOnly(id=request.server_ids[0]))
        elif request.kind == "update":
            await self.servers.server_update(caller, msgspec.convert(request.body, ServerUpdate))
        elif request.kind == "action":
            await self.actions.action(caller, msgspec.convert(request.body, ServerAction))

    async def _report(
        self, request: SiteRequest, status: Literal["failed", "expired"], message: str
    ) -> None:
        outcome = SiteOutcome(
            request_id=request.request_id,
            site=self.site,
            server_ids=request.server_ids,
            status=status,
            message=message[:MAX_MESSAGE],
        )
        await micro.call(self.api.nc, subjects.SITE_OUTCOME, outcome, timeout=CORE_TIMEOUT)
        LOG.warning("site.request_not_booted", request=request.request_id, status=status)
