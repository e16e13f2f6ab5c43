"""The core's site endpoints: sites joining and listed, and requests routed to a site.

A site joins by a request on subjects.SITE_JOIN (sent by its own API service); the core
keeps its record in the `sites` bucket and a mirror of its servers bucket, shown with
the core's own servers (core/api/site_views.py). A create whose availability zone is a
site's is queued for that site (HVMESH_SITE_REQUESTS, which the site sources) with
server ids chosen here; a delete, update or action of a site's server is queued for its
site the same way (hand_over). The site runs them (core/api/site_inbox.py).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.api import idempotency
from hvmesh.core.api.lookups import own_server
from hvmesh.core.api.requests import Empty
from hvmesh.core.api.site_views import SiteViews
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors, subjects
from hvmesh.core.protocol.base import Request, new_id
from hvmesh.core.protocol.records import Server
from hvmesh.core.protocol.requests import ServerCreate
from hvmesh.core.protocol.sites import (
    SiteJoin,
    SiteName,
    SiteOutcome,
    SiteRequest,
    SiteRequestKind,
)
from hvmesh.core.protocol.version import VERSION
from hvmesh.core.state import sites as site_streams
from hvmesh.core.state.store import CasConflict, Store
from hvmesh.core.state.tasks import new_request_id

LOG = log.get_logger(__name__)


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


class SiteEndpoints(SiteViews):
    """The site endpoints, and the routing other endpoints ask for, over SiteViews."""

    async def hand_over(
        self, kind: SiteRequestKind, ref: str, caller: Caller, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Queue a delete, update or action of a site's server for its site; the reply
        shows the server as the core knows it. NotFound if `ref` is no such server."""
        s = self.held(ref, caller)
        if s is None:
            raise errors.NotFound(f"server {ref} not found")
        queued = self.queued.get(s.id)
        if kind == "delete" and queued is not None and s.vm_state == "error":
            await self._dismiss(queued, s.id)  # its create failed: nothing at the site
            return {"server": self.show(s, caller)}
        request = self._request(self.site_of(s.id), caller, [s.id])
        request = msgspec.structs.replace(request, kind=kind, body={**body, "id": s.id})
        await self._publish(request)
        LOG.info("sites.request_queued", site=request.site, server=s.id, kind=kind)
        return {"server": self.show(s, caller), "request_id": request.request_id}

    async def _dismiss(self, request: SiteRequest, server_id: str) -> None:
        """Delete at the core a server whose create its site refused or never took."""
        outcome = self.failed[request.request_id]
        kept = await self._keep(
            msgspec.structs.replace(outcome, deleted=[*outcome.deleted, server_id])
        )
        self._take(kept)
        LOG.info("sites.failed_server_deleted", site=request.site, server=server_id)

    async def _keep(self, outcome: SiteOutcome) -> SiteOutcome:
        """Write `outcome`, keeping the servers deleted at the core that its record names."""
        bucket = self.api.st.site_outcomes

        def merged(held: SiteOutcome | None) -> SiteOutcome:
            deleted = sorted({*outcome.deleted, *(held.deleted if held else [])})
            return msgspec.structs.replace(held or outcome, deleted=deleted)

        while True:
            entry = await bucket.get(outcome.request_id)
            try:
                if entry is None:
                    await bucket.create(outcome.request_id, merged(None))
                else:
                    await bucket.update(outcome.request_id, merged(entry.value), entry.revision)
            except CasConflict:
                continue  # another API wrote it first: merge with what it wrote
            return merged(entry.value if entry else None)

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
        """Queue a create for `site` and answer with its servers (BUILD), ids chosen here.

        With a client token, the request's id and its servers' ids follow from the token:
        a retry of a create whose first publish did land (its answer lost) is the same
        message (deduplicated by the stream) and the same create at the site (its
        client token), never a second one."""
        count = req.max_count if req.max_count is not None else req.min_count
        ids = [new_id() for _ in range(count)]
        request = self._request(site, caller, ids)
        if req.client_token is not None:
            seed = idempotency.token_key(caller.project, req.client_token)
            ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}.{i}")) for i in range(count)]
            rid = f"req-{uuid.uuid5(uuid.NAMESPACE_URL, seed)}"
            request = msgspec.structs.replace(request, request_id=rid, server_ids=ids)
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
        # Its mirror is made before the answer, and followed from the next check (now).
        view = site_streams.view_stream(site.name, self.api.cfg.nats.replicas)
        await site_streams.ensure(self.api.js, view)
        self._changed.set()
        LOG.info("sites.joined", site=site.name, zones=site.availability_zones)
        return {"site": site.name, "core_version": VERSION}

    async def outcome(self, caller: Caller, req: SiteOutcome) -> dict[str, Any]:
        """A site did not boot a request: keep why, show its servers in ERROR."""
        self._take(await self._keep(req))
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
                    "last_heard_s": None
                    if state is None or state.active is None
                    else round(state.active, 1),
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
        await self.forget(req.name)
        await site_streams.drop_view(self.api.js, req.name)
        LOG.info("sites.deleted", site=req.name)
        return {}
