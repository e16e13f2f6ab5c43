"""The core's side of sites: joins, routing requests to sites, the view of every site's servers, links.

A site joins by a request on subjects.SITE_JOIN (sent by its own API service); the core
keeps its record in the `sites` bucket and a mirror of its servers bucket
(core/state/sites.py). Every server of every site's mirror goes into the API's one
server index, so listings and `servers.get` at the core show them; while a site's
JetStream does not answer (its link is down), its servers are shown as last known with
status UNKNOWN, as Nova shows servers of a down cell. A create whose availability zone is
a site's is queued for that site (HVMESH_SITE_REQUESTS, which the site sources) with
server ids chosen here; until the site's mirror shows them, the servers are shown as
the request describes them: BUILD, or ERROR once the site reported it failed or the
request outlived [site] request_timeout. A delete, update or action of a site's server
is queued for its site the same way (hand_over).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from hvmesh.core import log
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.lookups import own_server
from hvmesh.core.api.requests import Empty
from hvmesh.core.api.views import server_view
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.base import Request, new_id
from hvmesh.core.protocol.records import Fault, Flavor, Server
from hvmesh.core.protocol.requests import ServerCreate
from hvmesh.core.protocol.sites import (
    SiteJoin,
    SiteName,
    SiteOutcome,
    SiteRequest,
    SiteRequestKind,
)
from hvmesh.core.protocol.version import VERSION
from hvmesh.core.state import bucket_watch
from hvmesh.core.state import sites as site_streams
from hvmesh.core.state.server_index import ServerIndex
from hvmesh.core.state.store import Bucket, Store
from hvmesh.core.state.tasks import new_request_id
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

UNKNOWN = "UNKNOWN"  # the status of a server of a site the core cannot reach


class SiteRef(Request):
    name: SiteName


async def own_here(
    st: Store, sites: SiteEndpoints | None, server_id: str, caller: Caller
) -> Server:
    """The caller's server at this deployment; at the core, one of a site's is a 409
    naming the site (for requests that are not handed to sites: SiteEndpoints.hand_over)."""
    try:
        return await own_server(st, server_id, caller)
    except errors.NotFound:
        if sites is not None:
            sites.refuse_elsewhere(server_id, caller)
        raise


class SiteEndpoints:
    """Sites as the core's API sees them; `index` is the API's server index."""

    def __init__(self, api: ApiContext, index: ServerIndex) -> None:
        self.api = api
        self.index = index
        self.links: dict[str, bool] = {}  # site -> whether its JetStream answers now
        self.at_site: dict[str, str] = {}  # server id -> site, for servers its mirror shows
        self.queued: dict[str, SiteRequest] = {}  # server id -> its request, not yet seen there
        self.failed: dict[str, SiteOutcome] = {}  # request id -> why its site did not boot it
        self.zones: dict[str, list[str]] = {}  # site -> the availability zones it serves
        self._views: dict[str, asyncio.Task[None]] = {}
        self._watchers: list[KeyValue.KeyWatcher] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._requests: Any = None

    # --- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        js, replicas = self.api.js, self.api.cfg.nats.replicas
        await site_streams.ensure(js, site_streams.requests_stream(replicas))
        for outcome in await self.api.st.site_outcomes.values():
            self.failed[outcome.request_id] = outcome
        self._requests = await js.subscribe(
            subjects.SITE_REQUESTS_ALL,
            stream=subjects.SITE_REQUESTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_request,
        )
        await self._check()  # creates are routed from the first request on
        self._tasks.append(asyncio.create_task(self._upkeep()))

    async def stop(self) -> None:
        if self._requests is not None:
            with contextlib.suppress(Exception):
                await self._requests.unsubscribe()
        await stop_tasks([*self._tasks, *self._views.values()])
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _upkeep(self) -> None:
        """Every check interval: a view for each site, each site's link, overdue requests."""
        every = self.api.cfg.site.link_check_interval
        while True:
            await asyncio.sleep(every)
            try:
                await self._check()
            except Exception:
                LOG.exception("sites.check_failed")

    async def _check(self) -> None:
        records = await self.api.st.sites.values()
        self.zones = {s.name: list(s.availability_zones) for s in records}
        sites = set(self.zones)
        for name in sites - set(self._views):
            await site_streams.ensure(
                self.api.js, site_streams.view_stream(name, self.api.cfg.nats.replicas)
            )
            self._views[name] = asyncio.create_task(self._watch_view(name))
        for name in set(self._views) - sites:
            await stop_tasks([self._views.pop(name)])
        names = sorted(sites)
        ups = await asyncio.gather(*(site_streams.link_up(self.api.nc, n) for n in names))
        for name, up in zip(names, ups, strict=True):
            if self.links.get(name) != up:
                LOG.info("sites.link_" + ("up" if up else "down"), site=name)
            self.links[name] = up
        for name in set(self.links) - sites:
            del self.links[name]
        self._expire()

    async def _watch_view(self, site: str) -> None:
        bucket = Bucket(site_streams.view_bucket(self.api.js, site), Server)

        def take(key: str, value: bytes | None, revision: int) -> None:
            record = bucket.decode(value) if value else None
            self.queued.pop(key, None)
            if record is None:
                self.at_site.pop(key, None)
            else:
                self.at_site[key] = site
            self.index.apply(key, record, revision, own=False)

        await bucket_watch.watch(
            bucket, take, asyncio.Event(), self._watchers, lambda: None, "sites.view"
        )

    def _on_request_data(self, data: bytes) -> None:
        request = msgspec.json.decode(data, type=SiteRequest)
        if request.create is None:
            return  # a delete, update or action: the site's record shows its effect
        for i, server_id in enumerate(request.server_ids, start=1):
            if server_id in self.at_site:
                continue
            self.queued[server_id] = request
            self.index.apply(server_id, self._queued_server(request, server_id, i), 0, own=False)

    async def _on_request(self, msg: Any) -> None:
        try:
            self._on_request_data(msg.data)
        except msgspec.DecodeError:
            LOG.warning("sites.bad_request_record", subject=msg.subject)

    def _expire(self) -> None:
        """Requests past their deadline that their site never took: ERROR at the core."""
        t = time.time()
        for server_id, request in list(self.queued.items()):
            if request.request_id in self.failed or not request.deadline or t < request.deadline:
                continue
            self._fail(
                SiteOutcome(
                    request_id=request.request_id,
                    site=request.site,
                    server_ids=request.server_ids,
                    status="expired",
                    message=f"site {request.site} did not take the request within "
                    f"{self.api.cfg.site.request_timeout:g} s ([site] request_timeout)",
                )
            )
            LOG.warning("sites.request_expired", site=request.site, server=server_id)

    def _fail(self, outcome: SiteOutcome) -> None:
        self.failed.setdefault(outcome.request_id, outcome)
        for i, server_id in enumerate(outcome.server_ids, start=1):
            request = self.queued.get(server_id)
            if request is not None:
                shown = self._queued_server(request, server_id, i)
                self.index.apply(server_id, shown, 0, own=False, force=True)

    def _queued_server(self, request: SiteRequest, server_id: str, i: int) -> Server:
        """A queued server as the core shows it until its site's mirror has it."""
        create = request.create
        assert create is not None
        outcome = self.failed.get(request.request_id)
        count = len(request.server_ids)
        return Server(
            id=server_id,
            name=create.name if count == 1 else f"{create.name}-{i}",
            project=request.project,
            user=request.user,
            flavor=Flavor(id="", name=create.flavor, vcpus=0, ram_mb=0, disk_gb=0),
            image_id="",
            image_name=create.image,
            availability_zone=create.availability_zone,
            metadata=create.metadata,
            vm_state="building" if outcome is None else "error",
            task_state="scheduling" if outcome is None else None,
            fault=None if outcome is None else Fault(code=500, message=outcome.message),
            created_at=request.accepted_at,
            updated_at=request.accepted_at if outcome is None else outcome.at,
        )

    # --- what other endpoints ask ------------------------------------------------------------

    def site_for(self, zone: str | None) -> str | None:
        """The site serving availability zone `zone`, if a site does."""
        if zone is None:
            return None
        for name, zones in self.zones.items():
            if zone in zones:
                return name
        return None

    def show(self, s: Server, caller: Caller) -> dict[str, Any]:
        """server_view, with the server's site and, if that site is cut off, UNKNOWN."""
        view = server_view(s, caller)
        site = self.at_site.get(s.id)
        queued = self.queued.get(s.id)
        if site is not None:
            view["site"] = site
            if not self.links.get(site, False):
                view["status"] = UNKNOWN
        elif queued is not None:
            view["site"] = queued.site
        return view

    def held(self, ref: str, caller: Caller) -> Server | None:
        """A server of a site (or queued for one) the caller may see, by id or unique name."""
        ids = [ref] if ref in self.at_site or ref in self.queued else []
        if not ids:
            ids = [i for i in [*self.at_site, *self.queued] if self._name(i) == ref]
        visible = []
        for server_id in ids:
            entry = self.index.records.get(server_id)
            if entry is not None and (caller.is_admin or entry.value.project == caller.project):
                visible.append(entry.value)
        if len(visible) > 1:
            raise errors.Conflict(f"several servers are named {ref!r}: use an id")
        return visible[0] if visible else None

    def _name(self, server_id: str) -> str | None:
        entry = self.index.records.get(server_id)
        return entry.value.name if entry is not None else None

    def site_of(self, server_id: str) -> str:
        return self.at_site.get(server_id) or self.queued[server_id].site

    def refuse_elsewhere(self, server_id: str, caller: Caller) -> None:
        """Raise if the server lives at a site and this request cannot be handed to it."""
        s = self.held(server_id, caller)
        if s is None:
            return
        raise errors.Conflict(
            f"server {s.id} is at site {self.site_of(s.id)}: ask that site's API for this"
        )

    async def hand_over(
        self, kind: SiteRequestKind, ref: str, caller: Caller, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Queue a delete, update or action of a site's server for its site; the reply
        shows the server as the core knows it. NotFound if `ref` is no such server."""
        s = self.held(ref, caller)
        if s is None:
            raise errors.NotFound(f"server {ref} not found")
        request = self._request(self.site_of(s.id), caller, [s.id])
        request = msgspec.structs.replace(request, kind=kind, body={**body, "id": s.id})
        await self._publish(request)
        LOG.info("sites.request_queued", site=request.site, server=s.id, kind=kind)
        return {"server": self.show(s, caller), "request_id": request.request_id}

    def _request(self, site: str, caller: Caller, server_ids: list[str]) -> SiteRequest:
        return SiteRequest(
            request_id=new_request_id(),
            site=site,
            server_ids=server_ids,
            project=caller.project,
            user=caller.user,
            roles=list(caller.roles),
            is_admin=caller.is_admin,
            deadline=time.time() + self.api.cfg.site.request_timeout,
        )

    async def _publish(self, request: SiteRequest) -> None:
        data = msgspec.json.encode(request)
        await self.api.js.publish(
            subjects.site_requests(request.site),
            data,
            stream=subjects.SITE_REQUESTS_STREAM,
            headers={"Nats-Msg-Id": request.request_id},
        )
        self._on_request_data(data)

    async def route(self, site: str, caller: Caller, req: ServerCreate) -> dict[str, Any]:
        """Queue a create for `site` and answer with its servers (BUILD), ids chosen here."""
        count = req.max_count if req.max_count is not None else req.min_count
        request = self._request(site, caller, [new_id() for _ in range(count)])
        request = msgspec.structs.replace(request, create=req)
        await self._publish(request)
        LOG.info("sites.request_queued", site=site, server=request.server_ids[0], count=count)
        views = [
            self.show(self._queued_server(request, sid, i), caller)
            for i, sid in enumerate(request.server_ids, start=1)
        ]
        reply: dict[str, Any] = {"server": views[0], "reservation_id": request.request_id}
        if count > 1:
            reply["servers"] = views
        return reply

    # --- endpoints ---------------------------------------------------------------------------

    async def join(self, caller: Caller, req: SiteJoin) -> dict[str, Any]:
        """A site (its API service) says it is there, and which zones it serves."""
        site = req.site
        await self.api.st.sites.put(site.name, site)
        self.zones[site.name] = list(site.availability_zones)
        LOG.info("sites.joined", site=site.name, zones=site.availability_zones)
        return {"site": site.name, "core_version": VERSION}

    async def outcome(self, caller: Caller, req: SiteOutcome) -> dict[str, Any]:
        """A site did not boot a request: keep why, show its servers in ERROR."""
        await self.api.st.site_outcomes.put(req.request_id, req)
        self._fail(req)
        LOG.warning("sites.request_failed", site=req.site, status=req.status, reason=req.message)
        return {"request_id": req.request_id}

    async def list(self, caller: Caller, req: Empty) -> dict[str, Any]:
        """Every site: its zones, link, how far the core's view is behind, its servers."""
        out = []
        for site in sorted(await self.api.st.sites.values(), key=lambda s: s.name):
            try:
                state = await site_streams.view_state(self.api.js, site.name)
                unread = ""
            except Exception as exc:  # JetStream busy (a leader moving): the rest still shows
                state, unread = None, f"the mirror's state did not answer: {exc!r}"
            servers = sum(1 for s in self.at_site.values() if s == site.name)
            queued = sum(
                1
                for r in self.queued.values()
                if r.site == site.name and r.request_id not in self.failed
            )
            out.append(
                {
                    "name": site.name,
                    "availability_zones": site.availability_zones,
                    "link": "up" if self.links.get(site.name) else "down",
                    "lag": None if state is None else state.lag,
                    "last_heard_s": None if state is None else state.active,
                    "view_error": unread if state is None else state.error,
                    "servers": servers,
                    "queued": queued,
                    "joined_at": site.joined_at,
                    "version": site.version,
                }
            )
        return {"sites": out}

    async def delete(self, caller: Caller, req: SiteRef) -> dict[str, Any]:
        """Forget a site: its record and the core's view go; the site keeps its own."""
        if await self.api.st.sites.get(req.name) is None:
            raise errors.NotFound(f"site {req.name} not found")
        await self.api.st.sites.delete(req.name)
        self.zones.pop(req.name, None)
        task = self._views.pop(req.name, None)
        if task is not None:
            await stop_tasks([task])
        for server_id, site in list(self.at_site.items()):
            if site == req.name:
                del self.at_site[server_id]
                self.index.apply(server_id, None, 0, own=False, force=True)
        await site_streams.drop_view(self.api.js, req.name)
        self.links.pop(req.name, None)
        return {}
