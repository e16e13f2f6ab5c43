"""The API's compute listings: filtered and paged servers, zones, services.

hvmesh.api.servers.list filters and pages as Nova's GET /servers does;
hvmesh.api.availability_zones.list and hvmesh.api.services.list answer what `openstack
availability zone list` and `compute service list` show (hypervisors are in
core/api/hypervisors.py). Services are found by asking every NATS micro service for a
PING, by the conductors' waiting pull requests, and by the hosts' heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from msgspec import Meta
from nats.errors import TimeoutError as NatsTimeout

from hvmesh.core import log
from hvmesh.core.api import paging
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.lookups import find_flavor, find_image
from hvmesh.core.api.paging import Page
from hvmesh.core.api.requests import Empty
from hvmesh.core.api.server_filters import changes_since, name_pattern
from hvmesh.core.api.sites import SiteEndpoints
from hvmesh.core.api.views import server_view
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors, states, subjects
from hvmesh.core.protocol.records import Server
from hvmesh.core.state.server_index import ServerIndex
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

INTERNAL_ZONE = "internal"  # the zone Nova shows for services that are not compute hosts
PING_WINDOW = 0.5  # seconds to collect micro services' PING replies
CONDUCTOR_CONSUMERS = (
    (subjects.TASKS_STREAM, subjects.CONDUCTOR_TASKS_DURABLE),
    (subjects.EVENTS_STREAM, subjects.CONDUCTOR_EVENTS_DURABLE),
    (subjects.TIMERS_STREAM, subjects.CONDUCTOR_TIMERS_DURABLE),
)

Ref255 = Annotated[str, Meta(min_length=1, max_length=255)]


class ServerList(Page):
    """hvmesh.api.servers.list: every field optional, as Nova's GET /servers query."""

    all_projects: bool = False  # admin: every project's servers, not only its own
    project: Ref255 | None = None  # admin, with all_projects: this project's servers only
    status: Ref255 | None = None  # e.g. ACTIVE, SHUTOFF; any case
    name: Ref255 | None = None  # a regular expression, searched in the name
    host: Ref255 | None = None  # admin only
    flavor: Ref255 | None = None  # id or name
    image: Ref255 | None = None  # id or name
    changes_since: str | float | None = None  # ISO 8601 or seconds since the epoch
    sort_dir: Literal["asc", "desc"] = "asc"  # by (created_at, id): oldest first by default


class ComputeEndpoints:
    """Listing endpoints sharing the API service's store, index and connection."""

    def __init__(self, api: ApiContext) -> None:
        self.api = api
        self.servers_index = ServerIndex()  # started and stopped by the API service
        self.sites: SiteEndpoints | None = None  # at the core: sites' servers are shown too

    # --- servers.list ---------------------------------------------------------------------

    async def server_list(self, caller: Caller, req: ServerList) -> dict:
        # policy has allowed all_projects, host and project (compute:servers:list:*)
        if req.project is not None and not req.all_projects:
            raise errors.BadRequest("project: only together with all_projects")
        keep = await self._filter(caller, req)
        scope = req.project or (None if req.all_projects else caller.project)
        show = self.sites.show if self.sites is not None else server_view
        return await paging.from_index(
            self.api,
            "servers",
            self.servers_index,
            req,
            None if scope is None else (scope,),
            lambda s: s.id,
            lambda s: show(s, caller),
            keep,
            reverse=req.sort_dir == "desc",
        )

    async def _filter(self, caller: Caller, req: ServerList) -> Callable[[Server], bool]:
        """A predicate over servers for the request's status, name, host, flavor, image
        and changes_since."""
        pattern = name_pattern(req.name) if req.name is not None else None
        since = changes_since(req.changes_since) if req.changes_since is not None else None
        flavor = await self._matcher(req.flavor, find_flavor, self.api.st, caller)
        image = await self._matcher(req.image, find_image, self.api.st, caller)
        status = req.status.upper() if req.status is not None else None

        def keep(s: Server) -> bool:
            return (
                (status is None or states.status(s.vm_state, s.task_state) == status)
                and (since is None or s.updated_at >= since)
                and (pattern is None or pattern.search(s.name) is not None)
                and (req.host is None or s.host == req.host)
                and flavor(s.flavor.id, s.flavor.name)
                and image(s.image_id, s.image_name)
            )

        return keep

    @staticmethod
    async def _matcher(
        ref: str | None,
        find: Callable[[Store, str, Caller], Awaitable[Any]],
        st: Store,
        caller: Caller,
    ) -> Callable[[str, str], bool]:
        """Whether a server's (id, name) copy of a flavor or image is the one `ref` names.

        `ref` is looked up as a current record (an ambiguous name is a 409); one that is
        gone still matches servers keeping a copy with that id or name.
        """
        if ref is None:
            return lambda id_, name: True
        try:
            found = (await find(st, ref, caller)).id
        except errors.NotFound:
            return lambda id_, name: ref in (id_, name)
        return lambda id_, name: id_ == found

    # --- availability_zones.list ----------------------------------------------------------

    async def zones(self, caller: Caller, req: Empty) -> dict:
        """Zones of aggregates and of hosts, and the default zone; available while a host
        in it is up and enabled. Host names are for the admin only."""
        index = self.api.index
        members: dict[str, list[str]] = {self.api.cfg.compute.availability_zone: []}
        for aggregate in index.aggregates.values():
            if aggregate.availability_zone:
                members.setdefault(aggregate.availability_zone, [])
        for name in sorted(index.hosts):
            members.setdefault(index.zone_of(name), []).append(name)
        out = []
        for zone in sorted(members):
            usable = any(
                index.is_up(h) and index.hosts[h].value.status == "enabled" for h in members[zone]
            )
            row: dict[str, Any] = {
                "zone_name": zone,
                "zone_status": "available" if usable else "not available",
            }
            if caller.is_admin:
                row["hosts"] = members[zone]
            out.append(row)
        return {"availability_zones": out}

    # --- services.list --------------------------------------------------------------------

    async def services(self, caller: Caller, req: Empty) -> dict:
        now = time.time()
        rows = [
            {
                "id": info["id"],
                "binary": info["name"],
                "host": (info.get("metadata") or {}).get("host", ""),
                "zone": INTERNAL_ZONE,
                "status": "enabled",
                "state": "up",
                "updated_at": now,
            }
            for info in await self._ping()
            if str(info.get("name", "")).startswith("hvmesh-")
        ]
        waiting = await self._conductor_pulls()
        if waiting is not None:
            rows.append(
                {
                    "id": "conductor",
                    "binary": "hvmesh-conductor",
                    "host": "",
                    "zone": INTERNAL_ZONE,
                    "status": "enabled",
                    "state": "up" if waiting else "down",
                    "updated_at": now if waiting else None,
                }
            )
        index = self.api.index
        for name in sorted(index.hosts):
            host = index.hosts[name].value
            rows.append(
                {
                    "id": name,
                    "binary": "hvmesh-compute",
                    "host": name,
                    "zone": index.zone_of(name),
                    "status": host.status,
                    "state": "up" if index.is_up(name) else "down",
                    "updated_at": index.heartbeats.get(name),
                    "disabled_reason": host.disabled_reason,
                }
            )
        order = {"hvmesh-api": 0, "hvmesh-conductor": 1, "hvmesh-scheduler": 2}
        rows.sort(key=lambda r: (order.get(r["binary"], 3), r["host"], r["id"]))
        return {"services": rows}

    async def _ping(self) -> list[dict[str, Any]]:
        """The PING replies of every micro service of the account, within PING_WINDOW."""
        nc = self.api.nc
        inbox = nc.new_inbox()
        replies: list[dict[str, Any]] = []
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish("$SRV.PING", b"", reply=inbox)
            deadline = asyncio.get_running_loop().time() + PING_WINDOW
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except (NatsTimeout, TimeoutError):
                    break  # the window closed
                with contextlib.suppress(ValueError):
                    replies.append(json.loads(msg.data))
        finally:
            await sub.unsubscribe()
        return replies

    async def _conductor_pulls(self) -> int | None:
        """Pull requests conductors have waiting (None: no conductor ever started)."""
        total, seen = 0, False
        for stream, durable in CONDUCTOR_CONSUMERS:
            try:
                info = await self.api.js.consumer_info(stream, durable)
            except Exception:
                continue
            seen = True
            total += info.num_waiting or 0
        return total if seen else None
