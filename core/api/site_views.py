"""What the core shows of its sites: every site's mirror in the server index, links, queued requests.

Every server of every site's mirror (core/state/sites.py) goes into the API's one server
index, so listings and `servers.get` at the core show them; while a site's JetStream
does not answer (its link is down), its servers are shown as last known with status
UNKNOWN, as Nova shows servers of a down cell. A create queued for a site
(HVMESH_SITE_REQUESTS) is shown as its request describes it until the site's mirror has
its servers: BUILD, or ERROR once the site reported it failed (the `site_outcomes`
bucket) or it outlived [site] request_timeout. core/api/sites.py routes requests to sites.
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
from hvmesh.core.api.views import server_view
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.records import Fault, Flavor, Server
from hvmesh.core.protocol.sites import SiteOutcome, SiteRequest
from hvmesh.core.state import bucket_watch
from hvmesh.core.state import sites as site_streams
from hvmesh.core.state.server_index import ServerIndex
from hvmesh.core.state.store import Bucket
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

UNKNOWN = "UNKNOWN"  # the status of a server of a site the core cannot reach
VIEW_LOAD_WAIT = 30.0  # seconds a starting API waits for the sites' mirrors to load


class SiteViews:
    """Sites as the core's API shows them; `index` is the API's server index."""

    def __init__(self, api: ApiContext, index: ServerIndex) -> None:
        self.api = api
        self.index = index
        self.links: dict[str, bool] = {}  # site -> whether its JetStream answers now
        self.at_site: dict[str, str] = {}  # server id -> site, for servers its mirror shows
        self.queued: dict[str, SiteRequest] = {}  # server id -> its request, not yet seen there
        self.failed: dict[str, SiteOutcome] = {}  # request id -> why its site did not boot it
        self.zones: dict[str, list[str]] = {}  # site -> the availability zones it serves
        self.seen: set[str] = set()  # every server id a mirror has shown, deleted ones too
        self._views: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}  # loaded, watch
        self._changed = asyncio.Event()  # a site joined or went
        self._watchers: list[KeyValue.KeyWatcher] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._requests: Any = None

    # --- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Sites, then each site's mirror, then the queued requests (so a request whose
        servers a mirror has, or had, is not shown as queued again)."""
        js, replicas = self.api.js, self.api.cfg.nats.replicas
        await site_streams.ensure(js, site_streams.requests_stream(replicas))
        sites, outcomes = asyncio.Event(), asyncio.Event()
        for bucket, apply, loaded, notify in (
            (self.api.st.sites, self._on_site, sites, self._changed.set),
            (self.api.st.site_outcomes, self._on_outcome, outcomes, lambda: None),
        ):
            watching = bucket_watch.watch(bucket, apply, loaded, self._watchers, notify, "sites")
            self._tasks.append(asyncio.create_task(watching))
        await sites.wait()
        await outcomes.wait()
        await self._check()
        views = [loaded for loaded, _ in self._views.values()]
        with contextlib.suppress(TimeoutError):  # a mirror not answering: go on without
            async with asyncio.timeout(VIEW_LOAD_WAIT):
                await asyncio.gather(*(v.wait() for v in views))
        self._requests = await js.subscribe(
            subjects.SITE_REQUESTS_ALL,
            stream=subjects.SITE_REQUESTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_request,
        )
        self._tasks.append(asyncio.create_task(self._upkeep()))

    async def stop(self) -> None:
        if self._requests is not None:
            with contextlib.suppress(Exception):
                await self._requests.unsubscribe()
        await stop_tasks([*self._tasks, *(task for _, task in self._views.values())])
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()

    def _on_outcome(self, key: str, value: bytes | None, revision: int) -> None:
        if value is not None:  # (an outcome expires with its requests: nothing to undo)
            self._take(self.api.st.site_outcomes.decode(value))

    def _on_site(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            self.zones.pop(key, None)
        else:
            site = self.api.st.sites.decode(value)
            self.zones[key] = list(site.availability_zones)

    async def _upkeep(self) -> None:
        """Each check interval, or at once when a site joins or goes: a mirror for each
        site, each site's link, overdue requests."""
        every = self.api.cfg.site.link_check_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self._check()
            except Exception:
                LOG.exception("sites.check_failed")

    async def _check(self) -> None:
        sites = set(self.zones)
        for name in sites - set(self._views):
            try:
                await site_streams.ensure(
                    self.api.js, site_streams.view_stream(name, self.api.cfg.nats.replicas)
                )
            except Exception:  # tried again at the next check; the other sites go on
                LOG.exception("sites.view_failed", site=name)
                continue
            loaded = asyncio.Event()
            self._views[name] = (loaded, asyncio.create_task(self._watch_view(name, loaded)))
        for name in set(self._views) - sites:
            await self.forget(name)
        names = sorted(sites)
        ups = await asyncio.gather(*(site_streams.link_up(self.api.nc, n) for n in names))
        for name, up in zip(names, ups, strict=True):
            if self.links.get(name) != up:
                LOG.info("sites.link_" + ("up" if up else "down"), site=name)
            self.links[name] = up
        for name in set(self.links) - sites:
            del self.links[name]
        self._expire()

    async def forget(self, site: str) -> None:
        """Stop showing a site that is gone from the `sites` bucket, and its servers."""
        view = self._views.pop(site, None)
        if view is not None:
            await stop_tasks([view[1]])
        for server_id, held in list(self.at_site.items()):
            if held == site:
                del self.at_site[server_id]
                self.index.apply(server_id, None, 0, own=False, force=True)
        self.links.pop(site, None)

    async def _watch_view(self, site: str, loaded: asyncio.Event) -> None:
        bucket = Bucket(site_streams.view_bucket(self.api.js, site), Server)

        def take(key: str, value: bytes | None, revision: int) -> None:
            record = bucket.decode(value) if value else None
            self.seen.add(key)
            self.queued.pop(key, None)
            if record is None:
                self.at_site.pop(key, None)
            else:
                self.at_site[key] = site
            self.index.apply(key, record, revision, own=False)

        await bucket_watch.watch(bucket, take, loaded, self._watchers, lambda: None, "sites.view")

    def _on_request_data(self, data: bytes) -> None:
        request = msgspec.json.decode(data, type=SiteRequest)
        if request.create is None:
            return  # a delete, update or action: the site's record shows its effect
        outcome = self.failed.get(request.request_id)
        for i, server_id in enumerate(request.server_ids, start=1):
            if server_id in self.seen:  # at its site now, or it was and is gone
                continue
            if outcome is not None and server_id in outcome.deleted:
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
            self._take(
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

    def _take(self, outcome: SiteOutcome) -> None:
        """A request its site did not boot: its servers in ERROR, or gone once deleted."""
        self.failed[outcome.request_id] = outcome
        for i, server_id in enumerate(outcome.server_ids, start=1):
            request = self.queued.get(server_id)
            if request is None:
                continue
            if server_id in outcome.deleted:
                del self.queued[server_id]
                self.index.apply(server_id, None, 0, own=False, force=True)
            else:
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
