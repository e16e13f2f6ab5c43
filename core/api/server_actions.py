"""The API's server actions: hvmesh.api.servers.action and the instance action log endpoints.

An action is checked against the state machine (core/protocol/actions.py), against what
the driver of the server's host can do (its capability traits; a 409 naming the capability
and the driver) and its own rules (the image of a rebuild must fit the flavor, a resize
needs another flavor, ...), then
accepted with one compare-and-set on the server that re-checks the state it read: a
refusal is a 409 or 400 and changes nothing. Accepted, the server shows the action's
task_state and request id, the action is logged, and a task is queued for the
conductor. lock, unlock, reset-state and console-log are done here at once.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from hvmesh.core import log
from hvmesh.core.api import paging, quota_checks
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.lookups import find_flavor, find_image, own_server, resolve
from hvmesh.core.api.networks import NetworkEndpoints
from hvmesh.core.api.policy import check_fits
from hvmesh.core.api.sites import SiteEndpoints, own_here
from hvmesh.core.api.snapshot import create_image, drop_image
from hvmesh.core.api.views import server_view
from hvmesh.core.bus import micro as bus
from hvmesh.core.bus import notify
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import actions, errors, states, subjects
from hvmesh.core.protocol.action_requests import (
    AttachInterface,
    ConsoleLog,
    CreateImage,
    DetachInterface,
    Evacuate,
    LiveMigrate,
    Lock,
    Migrate,
    Rebuild,
    ResetState,
    Resize,
    ServerAction,
    Unlock,
    Unshelve,
)
from hvmesh.core.protocol.base import Request, new_id, now
from hvmesh.core.protocol.messages import Task
from hvmesh.core.protocol.records import Migration, Server
from hvmesh.core.state import action_log, ports
from hvmesh.core.state.tasks import new_request_id, publish_task

LOG = log.get_logger(__name__)

CONSOLE_TIMEOUT = 10.0


class ServerRef(Request):
    id: Annotated[str, Meta(min_length=1, max_length=255)]


class ServerEventList(paging.Page, kw_only=True):
    """hvmesh.api.servers.events.list: a server's actions, paged by request id."""

    id: Annotated[str, Meta(min_length=1, max_length=255)]


class ActionRef(Request):
    id: Annotated[str, Meta(min_length=1, max_length=255)]
    request_id: Annotated[str, Meta(min_length=1, max_length=255)]


class ServerActions:
    """The action endpoints, sharing the API service's store and connection; ports and
    networks of interface actions come from `net`."""

    def __init__(
        self, api: ApiContext, net: NetworkEndpoints, sites: SiteEndpoints | None = None
    ) -> None:
        self.api = api
        self.net = net
        self.sites = sites  # at the core: an action on a site's server is queued for it

    # --- servers.action -----------------------------------------------------------------

    async def action(self, caller: Caller, req: ServerAction) -> dict:
        try:
            server = await own_server(self.api.st, req.id, caller)
        except errors.NotFound:
            if self.sites is None:
                raise
            body = msgspec.to_builtins(req)
            return await self.sites.hand_over("action", req.id, caller, body)
        req = msgspec.structs.replace(req, id=server.id)  # a name is resolved once, here
        name = actions.rule_name(req)
        rule = actions.check(name, server, caller.is_admin, caller.user)
        self.check_capable(name, server, req)
        if isinstance(req, ConsoleLog):
            return await self.console_log(server, req)
        if isinstance(req, Lock | Unlock | ResetState):
            return await self.at_once(caller, server, req)
        req, migration = await self.prepare(caller, server, req)
        counted = await self.reserve_quota(server, req, migration, rule.task_state)
        request_id = new_request_id()
        pending = req.port if isinstance(req, AttachInterface | DetachInterface) else None
        image_id = req.image_id if isinstance(req, CreateImage) else None

        def accept(s: Server) -> Server:
            actions.check(name, s, caller.is_admin, caller.user)  # the state may have moved on
            return msgspec.structs.replace(
                s,
                task_state=rule.task_state,
                request_id=request_id,
                migration=migration if migration is not None else s.migration,
                pending_port=pending,
                pending_image=image_id,
                fault=None,
                updated_at=now(),
            )

        try:
            written = await self.api.st.servers.mutate(server.id, accept)
        except BaseException:
            if counted:
                await quota_checks.settle_server(self.api, server)  # refused: as it was
            if isinstance(req, AttachInterface) and req.port is not None:
                await ports.let_go(self.api.st, server.id, req.port)  # refused: give it back
            if isinstance(req, CreateImage) and req.image_id is not None:
                await drop_image(self.api, req.image_id)  # refused: its image goes
            raise
        if written is None:
            if counted:
                await quota_checks.settle_server(self.api, server)
            if isinstance(req, CreateImage) and req.image_id is not None:
                await drop_image(self.api, req.image_id)
            raise errors.NotFound(f"server {req.id} not found")
        action = actions.action_name(req)
        await action_log.start(
            self.api.st, server.id, request_id, action, caller.project, caller.user
        )
        await notify.updated(self.api.nc, server, written.value)
        await publish_task(
            self.api.js,
            Task(kind="action", server_id=server.id, request_id=request_id, action=req),
        )
        LOG.info("api.server_action", server=server.id, action=action, request=request_id)
        reply: dict[str, Any] = {
            "server": server_view(written.value, caller),
            "request_id": request_id,
        }
        if isinstance(req, CreateImage):
            reply["image_id"] = req.image_id  # as Nova's createImage from 2.45
        return reply

    async def reserve_quota(
        self, s: Server, req: ServerAction, migration: Migration | None, task_state: str | None
    ) -> bool:
        """Count what a resize (the larger flavor) or the unshelve of an offloaded server
        (its flavor again) adds, before it is accepted; whether anything was counted."""
        if isinstance(req, Resize):
            after = msgspec.structs.replace(s, migration=migration)
        elif isinstance(req, Unshelve) and s.vm_state == states.SHELVED_OFFLOADED:
            after = msgspec.structs.replace(s, task_state=task_state)
        else:
            return False
        await quota_checks.reserve_server(self.api, after)
        return True

    def check_capable(self, name: str, s: Server, req: ServerAction) -> None:
        """409 when the driver of the server's host, or of the host a move names, lacks
        the capability the action needs (actions.ACTION_CAPABILITIES), read from the host
        traits in the inventory index. A host the index does not know is not judged here
        (a named one is refused by `prepare`)."""
        hosts = [s.host]
        if isinstance(req, Migrate | LiveMigrate | Evacuate) and req.host is not None:
            hosts.append(req.host)
        for host in hosts:
            entry = self.api.index.hosts.get(host) if host else None
            if entry is not None:
                actions.check_capable(name, entry.value)

    async def prepare(
        self, caller: Caller, s: Server, req: ServerAction
    ) -> tuple[ServerAction, Migration | None]:
        """Action-specific checks; references resolved to ids; the move a migration starts."""
        if isinstance(req, Rebuild):
            image = await resolve(
                find_image(self.api.st, req.image, caller, self.api.lists.images), "image"
            )
            check_fits(s.flavor, image)
            return msgspec.structs.replace(req, image=image.id), None
        if isinstance(req, Resize):
            flavor = await resolve(
                find_flavor(self.api.st, req.flavor, caller, self.api.lists.flavors), "flavor"
            )
            if flavor.id == s.flavor.id:
                raise errors.BadRequest(f"server {s.id} already has flavor {flavor.name}")
            image_entry = await self.api.st.images.get(s.image_id)
            if image_entry is not None:
                check_fits(flavor, image_entry.value)
            migration = self.migration("resize", s, new_flavor=flavor)
            return msgspec.structs.replace(req, flavor=flavor.id), migration
        if isinstance(req, Migrate | LiveMigrate | Evacuate):
            if req.host is not None:
                if await self.api.st.hosts.get(req.host) is None:
                    raise errors.BadRequest(f"host {req.host} not found")
                if req.host == s.host:
                    raise errors.BadRequest(f"server {s.id} is already on host {req.host}")
            if isinstance(req, Evacuate):
                assert s.host is not None
                if self.api.index.is_up(s.host):
                    raise errors.BadRequest(
                        f"Compute service of {s.host} is still in use: evacuate only "
                        "from a host that is down"
                    )
                m = self.migration("evacuation", s)
                if req.stop:
                    m = msgspec.structs.replace(m, old_vm_state=states.STOPPED)
                return req, m
            kind = "migration" if isinstance(req, Migrate) else "live-migration"
            return req, self.migration(kind, s)
        if isinstance(req, AttachInterface):
            return await self.attach_port(caller, s, req), None
        if isinstance(req, DetachInterface):
            return msgspec.structs.replace(req, port=await self.interface_port(s, req.port)), None
        if isinstance(req, CreateImage):
            return await create_image(self.api, s, req), None
        return req, None

    async def interface_port(self, s: Server, ref: str) -> str:
        """The port id of one of the server's interfaces, named by the port's id or name."""
        ids = [v.port_id for v in s.network_info]
        if ref in ids:
            return ref
        named = []
        for port_id in ids:
            entry = await self.api.st.ports.get(port_id)
            if entry is not None and entry.value.name == ref:
                named.append(port_id)
        if len(named) > 1:
            raise errors.Conflict(
                f"more than one interface port of server {s.id} is named {ref!r}: "
                f"{', '.join(named)}; use an id"
            )
        if not named:
            raise errors.BadRequest(f"port {ref} is not an interface of server {s.id}")
        return named[0]

    async def attach_port(self, caller: Caller, s: Server, req: AttachInterface) -> AttachInterface:
        """The port an attach plugs in: made on the network, or the given one bound."""
        if (req.network is None) == (req.port is None):
            raise errors.BadRequest("attach-interface: give either network or port")
        if req.port is not None:
            if req.fixed_ip is not None:
                raise errors.BadRequest("attach-interface: fixed_ip goes with network, not port")
            try:
                named = await self.net.own_port(req.port, caller)
            except errors.NotFound as exc:
                raise errors.BadRequest(f"port: {exc.message}") from None
            port = await ports.bind(self.api.st, named.id, s.id)
        else:
            assert req.network is not None
            network = await resolve(self.net.find_network(req.network, caller), "network")
            port = await ports.create(
                self.api.st,
                network,
                caller.project,
                fixed_ip=req.fixed_ip,
                server_id=s.id,
                auto_delete=True,
            )
        return msgspec.structs.replace(req, port=port.id, network=None, fixed_ip=None)

    @staticmethod
    def migration(kind: Any, s: Server, new_flavor: Any = None) -> Migration:
        assert s.host is not None
        return Migration(
            id=new_id(),
            kind=kind,
            source_host=s.host,
            old_flavor=s.flavor,
            new_flavor=new_flavor or s.flavor,
            old_vm_state=s.vm_state,
        )

    async def at_once(
        self, caller: Caller, server: Server, req: Lock | Unlock | ResetState
    ) -> dict:
        """lock, unlock and reset-state: one compare-and-set, logged as a finished action."""
        name = actions.action_name(req)

        def change(s: Server) -> Server | None:
            actions.check(name, s, caller.is_admin, caller.user)
            if isinstance(req, Lock):
                if s.locked_by is not None:
                    return None  # already locked: as Nova, nothing changes
                return msgspec.structs.replace(
                    s,
                    locked_by="admin" if caller.is_admin else "owner",
                    locker=caller.user,
                    locked_reason=req.reason,
                    updated_at=now(),
                )
            if isinstance(req, Unlock):
                if s.locked_by is None:
                    return None
                return msgspec.structs.replace(
                    s, locked_by=None, locker=None, locked_reason=None, updated_at=now()
                )
            return msgspec.structs.replace(
                s, vm_state=req.state, task_state=None, request_id=None, updated_at=now()
            )

        written = await self.api.st.servers.mutate(server.id, change)
        if written is None:
            raise errors.NotFound(f"server {req.id} not found")
        request_id = new_request_id()
        st = self.api.st
        await action_log.start(st, server.id, request_id, name, caller.project, caller.user)
        await action_log.finish(st, server.id, request_id)
        await notify.updated(self.api.nc, server, written.value)
        return {"server": server_view(written.value, caller), "request_id": request_id}

    async def console_log(self, server: Server, req: ConsoleLog) -> dict:
        """The guest's console output, asked of its host's agent (Nova's os-getConsoleOutput)."""
        assert server.host is not None
        body: dict[str, Any] = {"server_id": server.id}
        if req.length:
            body["length"] = req.length
        try:
            reply = await bus.call(
                self.api.nc,
                subjects.agent(server.host, "console_log"),
                body,
                timeout=CONSOLE_TIMEOUT,
            )
        except errors.ServiceUnavailable:
            raise errors.Conflict(
                f"the console of server {server.id} is unavailable: host {server.host} "
                "does not answer"
            ) from None
        return {"output": reply["output"]}

    # --- the action log -------------------------------------------------------------------

    async def events_list(self, caller: Caller, req: ServerEventList) -> dict:
        found = await self.actions_of(caller, req.id)
        return paging.page(
            self.api,
            "instance_actions",
            found,
            req,
            lambda a: a.request_id,
            lambda a: msgspec.structs.replace(a, events=[]),  # events: see .get
        )

    async def events_get(self, caller: Caller, req: ActionRef) -> dict:
        for a in await self.actions_of(caller, req.id):
            if a.request_id == req.request_id:
                if not caller.is_admin:  # hosts are not shown to tenants, as in Nova
                    a = msgspec.structs.replace(
                        a, events=[msgspec.structs.replace(e, host=None) for e in a.events]
                    )
                return {"instance_action": a}
        raise errors.NotFound(f"action {req.request_id} of server {req.id} not found")

    async def actions_of(self, caller: Caller, server_id: str) -> list[Any]:
        """A server's actions; an admin also reads those of a deleted server.

        Whoever may see the server sees all its actions, also an admin's on a tenant's
        server (as Nova's os-instance-actions); tenants never see hosts (events_get).
        """
        try:
            server_id = (await own_here(self.api.st, self.sites, server_id, caller)).id
        except errors.NotFound:
            if not caller.is_admin or not _is_token(server_id):
                raise
            if not await action_log.for_server(self.api.st, server_id):
                raise
        return await action_log.for_server(self.api.st, server_id)


def _is_token(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "-_" for c in text)
