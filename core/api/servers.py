"""The API's server endpoints: hvmesh.api.servers.{create,get,update,delete}; a boot starts here.

servers.create (ServerEndpoints.server_create) checks the flavor, image, zone, count,
user_data and key pair, makes or binds each server's ports (core/api/networks.py), adds
the servers to their server group, writes the server records (vm_state building) and
queues one build task on hvmesh.tasks.build for the conductor (core/conductor), which
schedules and boots them. servers.delete moves a server to task_state deleting at any
point, also mid-build or mid-action, and queues a delete task. Listing servers is in
core/api/compute.py, actions on a server in core/api/server_actions.py.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.api import idempotency, quota_checks
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.groups import ServerGroupEndpoints
from hvmesh.core.api.lookups import find_flavor, find_image, is_key, own_server, resolve
from hvmesh.core.api.networks import NetworkEndpoints
from hvmesh.core.api.policy import check_fits, check_user_data
from hvmesh.core.api.requests import IdOnly
from hvmesh.core.api.sites import SiteEndpoints
from hvmesh.core.api.views import server_view
from hvmesh.core.bus import notify
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import actions, errors, states
from hvmesh.core.protocol.base import new_id, now
from hvmesh.core.protocol.messages import Task
from hvmesh.core.protocol.records import Flavor, Image, Server, Vif
from hvmesh.core.protocol.requests import ServerCreate, ServerUpdate
from hvmesh.core.state import action_log, ports
from hvmesh.core.state.tasks import new_request_id, publish_task

LOG = log.get_logger(__name__)


class ServerEndpoints:
    """Create, show and delete servers; ports come from `net`, group membership from
    `groups`."""

    def __init__(
        self,
        api: ApiContext,
        net: NetworkEndpoints,
        groups: ServerGroupEndpoints,
        sites: SiteEndpoints | None = None,
    ) -> None:
        self.api = api
        self.net = net
        self.groups = groups
        self.sites = sites  # at the core: creates for a site's zone go there

    async def server_create(self, caller: Caller, req: ServerCreate) -> dict:
        """Boot: check the request, make the ports, write the servers, queue the build.

        With a client_token, once: a retry gets the first request's servers
        (core/api/idempotency.py). A zone that is a site's: queued for that site
        (core/api/sites.py)."""
        site = self.sites.site_for(req.availability_zone) if self.sites else None
        boot = self._boot if site is None else functools.partial(self._route, site)
        if req.client_token is not None:
            return await idempotency.create_once(self.api, caller, req, boot)
        return await boot(caller, req)

    async def _route(self, site: str, caller: Caller, req: ServerCreate) -> dict:
        assert self.sites is not None
        return await self.sites.route(site, caller, req)

    async def create_given(self, caller: Caller, req: ServerCreate, ids: list[str]) -> dict:
        """Boot with server ids chosen elsewhere (the core's, for a site): once per
        client_token, as server_create."""

        async def boot(c: Caller, r: ServerCreate) -> dict:
            return await self._boot(c, r, ids)

        if req.client_token is not None:
            return await idempotency.create_once(self.api, caller, req, boot)
        return await boot(caller, req)

    async def _boot(
        self, caller: Caller, req: ServerCreate, given: list[str] | None = None
    ) -> dict:
        flavor = await resolve(
            find_flavor(self.api.st, req.flavor, caller, self.api.lists.flavors), "flavor"
        )
        image = await resolve(
            find_image(self.api.st, req.image, caller, self.api.lists.images), "image"
        )
        if image.status != "active":
            raise errors.BadRequest(f"image {image.name} is {image.status}: upload its data first")
        check_fits(flavor, image)
        if req.availability_zone is not None:
            index = self.api.index
            zones = {index.zone_of(name) for name in index.hosts}
            if req.availability_zone not in zones:
                raise errors.BadRequest(
                    f"availability_zone {req.availability_zone!r} does not exist"
                )
        count = req.max_count if req.max_count is not None else req.min_count
        if count < req.min_count:
            raise errors.BadRequest(
                f"max_count ({req.max_count}) is less than min_count ({req.min_count})"
            )
        if req.ports and count > 1:
            raise errors.BadRequest("ports: a port serves one server; not with max_count > 1")
        user_data = check_user_data(req.user_data)
        await self._check_hinted_servers(caller, req)
        public_key = None
        if req.key_name is not None:
            try:
                public_key = (await self.net.find_keypair(req.key_name, caller)).public_key
            except errors.NotFound as exc:
                raise errors.BadRequest(f"key_name: {exc.message}") from None
        ids = await quota_checks.admit_servers(
            self.api,
            caller,
            flavor,
            given or [new_id() for _ in range(count)],
            req.min_count,
            req.metadata,
        )
        count = len(ids)  # a multi-create that did not fit whole: as many as fit
        nics: dict[str, list[Vif]] = {}
        try:
            for server_id in ids:
                nics[server_id] = await self.net.interfaces(
                    caller, server_id, req.networks, req.ports
                )
            return await self._create_servers(
                caller, req, flavor, image, ids, count, nics, public_key, user_data
            )
        except BaseException:
            for server_id, vifs in nics.items():
                if await self.api.st.servers.get(server_id) is None:
                    for v in vifs:
                        await ports.let_go(self.api.st, server_id, v.port_id)
            await quota_checks.release_servers(self.api, caller.project, ids)
            raise

    async def _check_hinted_servers(self, caller: Caller, req: ServerCreate) -> None:
        """same_host and different_host name only servers the caller may see: another
        project's server is a 400 as a missing one is (its existence is not told)."""
        hints = req.scheduler_hints
        for hint, named in (
            ("same_host", hints.same_host),
            ("different_host", hints.different_host),
        ):
            for server_id in named:
                entry = await self.api.st.servers.get(server_id) if is_key(server_id) else None
                if entry is None or not (caller.is_admin or entry.value.project == caller.project):
                    raise errors.BadRequest(f"scheduler_hints.{hint}: server {server_id} not found")

    async def _create_servers(
        self,
        caller: Caller,
        req: ServerCreate,
        flavor: Flavor,
        image: Image,
        ids: list[str],
        count: int,
        nics: dict[str, list[Vif]],
        public_key: str | None,
        user_data: str | None,
    ) -> dict:
        """Join the group, write the server records and their create actions, queue the
        build task: from here the conductor takes over."""
        group_id = req.scheduler_hints.group
        if group_id:
            try:
                group_id = await self.groups.join_group(group_id, ids, caller)
            except errors.NotFound as exc:
                raise errors.BadRequest(f"scheduler_hints.group: {exc.message}") from None
            hints = msgspec.structs.replace(req.scheduler_hints, group=group_id)
            req = msgspec.structs.replace(req, scheduler_hints=hints)
        reservation_id = f"r-{new_id()[:8]}"
        request_id = new_request_id()
        servers = [
            Server(
                id=server_id,
                # Nova's multi_instance_display_name_template: "%(name)s-%(count)d".
                name=req.name if count == 1 else f"{req.name}-{i}",
                project=caller.project,
                user=caller.user,
                flavor=flavor,
                image_id=image.id,
                image_name=image.name,
                availability_zone=req.availability_zone,
                metadata=req.metadata,
                image_properties=image.properties,
                scheduler_hints=req.scheduler_hints,
                reservation_id=reservation_id,
                request_id=request_id,
                network_info=nics[server_id],
                key_name=req.key_name,
                public_key=public_key,
                user_data=user_data,
                config_drive=req.config_drive,
            )
            for i, server_id in enumerate(ids, start=1)
        ]
        for server in servers:
            await action_log.start(
                self.api.st, server.id, request_id, "create", caller.project, caller.user
            )
            await self.api.st.servers.create(server.id, server)
        await publish_task(
            self.api.js,
            Task(
                kind="build",
                server_id=ids[0],
                attempt=0,
                request_id=request_id,
                server_ids=ids if count > 1 else [],
                min_count=req.min_count,
            ),
        )
        LOG.info("api.server_created", server=ids[0], count=count, project=caller.project)
        views = [server_view(s, caller) for s in servers]
        reply: dict[str, Any] = {"server": views[0], "reservation_id": reservation_id}
        if count > 1:
            reply["servers"] = views
        return reply

    async def server_get(self, caller: Caller, req: IdOnly) -> dict:
        try:
            server = await own_server(self.api.st, req.id, caller)
        except errors.NotFound:
            held = self.sites.held(req.id, caller) if self.sites else None
            if held is None or self.sites is None:
                raise
            return {"server": self.sites.show(held, caller)}
        return {"server": server_view(server, caller)}

    async def server_update(self, caller: Caller, req: ServerUpdate) -> dict:
        """Rename a server and set or remove its metadata items, in one compare-and-set."""
        if req.name is None and not req.metadata and not req.replace_metadata:
            raise errors.BadRequest("nothing to update: give name or metadata")
        try:
            server = await own_server(self.api.st, req.id, caller)
        except errors.NotFound:
            if self.sites is None:
                raise
            body = msgspec.to_builtins(req)
            return await self.sites.hand_over("update", req.id, caller, body)
        if req.replace_metadata:
            wanted = {k: v for k, v in req.metadata.items() if v is not None}
        else:
            wanted = _merged(server.metadata, req.metadata)
        await quota_checks.metadata_fits(self.api, server.project, wanted)

        def change(s: Server) -> Server:
            metadata = wanted if req.replace_metadata else _merged(s.metadata, req.metadata)
            name = req.name if req.name is not None else s.name
            return msgspec.structs.replace(s, name=name, metadata=metadata, updated_at=now())

        written = await self.api.st.servers.mutate(server.id, change)
        if written is None:
            raise errors.NotFound(f"server {req.id} not found")
        await notify.updated(self.api.nc, server, written.value)
        LOG.info("api.server_updated", server=server.id, project=caller.project)
        return {"server": server_view(written.value, caller)}

    async def server_delete(self, caller: Caller, req: IdOnly) -> dict:
        """Delete at any point, also mid-build or mid-action: the delete supersedes it.
        A site's server: queued for its site (core/api/sites.py)."""
        try:
            server = await own_server(self.api.st, req.id, caller)
        except errors.NotFound:
            if self.sites is None:
                raise
            return await self.sites.hand_over("delete", req.id, caller, {})
        request_id = new_request_id()
        superseded: list[str] = []

        def to_deleting(s: Server) -> Server | None:
            actions.check_unlocked(s, caller.is_admin, caller.user)
            superseded.clear()
            if s.task_state == states.DELETING:
                return None
            if s.request_id:
                superseded.append(s.request_id)
            # The running action's late events and timers no longer match the request id.
            return msgspec.structs.replace(
                s, task_state=states.DELETING, request_id=request_id, updated_at=now()
            )

        written = await self.api.st.servers.mutate(server.id, to_deleting)
        if written is None:
            raise errors.NotFound(f"server {req.id} not found")
        if written.value.request_id == request_id:
            await action_log.start(
                self.api.st, server.id, request_id, "delete", caller.project, caller.user
            )
            await notify.updated(self.api.nc, server, written.value)
            for old in superseded:  # the build or action the delete cuts short
                await action_log.finish(self.api.st, server.id, old, error="superseded by delete")
        await publish_task(
            self.api.js, Task(kind="delete", server_id=server.id, request_id=request_id)
        )
        return {"server": server_view(written.value, caller)}


def _merged(metadata: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """`metadata` with `changes` applied: a value sets its key, None removes it."""
    out = dict(metadata)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
