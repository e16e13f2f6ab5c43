"""The API service "hvmesh-api": JSON request/reply on hvmesh.api.<resource>.<verb>.

Each endpoint validates its body (msgspec), checks policy, writes records with
compare-and-set and answers Nova-style wrapped JSON ({"server": {...}}). Records are
scoped to the caller's project, which comes from the server-stamped Nats-Request-Info
header; the admin project sees everything.
"""

from __future__ import annotations

import base64
import binascii
import socket
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta
from nats.aio.client import Client

from hvmesh.core import action_log, actions, errors, log, notify, ports, reports, states
from hvmesh.core.bus import Caller, MicroService
from hvmesh.core.compute_api import ComputeEndpoints
from hvmesh.core.conductor import new_request_id, publish_task
from hvmesh.core.config import Config
from hvmesh.core.image_api import ImageEndpoints
from hvmesh.core.inventory import Index
from hvmesh.core.models import (
    Aggregate,
    AggregateCreate,
    AggregateHost,
    AggregateMetadata,
    Flavor,
    FlavorCreate,
    Image,
    Port,
    Request,
    Server,
    ServerAction,
    ServerCreate,
    ServerGroup,
    ServerGroupCreate,
    Task,
    Vif,
    custom_resources,
    new_id,
    now,
)
from hvmesh.core.network_api import NetworkEndpoints
from hvmesh.core.server_actions import ActionRef, ServerActions, ServerRef
from hvmesh.core.store import Bucket, CasConflict, Store

LOG = log.get_logger(__name__)

VERSION = "0.1.0"
MIN_MICROVERSION = "1.0"
MAX_MICROVERSION = "1.0"


class Empty(Request):
    """A request that takes no fields."""


class Ref(Request):
    """A record named by id or by unique name."""

    id: str | None = None
    name: str | None = None


class IdOnly(Request):
    id: str


class InventoryQuery(Request):
    sql: Annotated[str, Meta(min_length=1, max_length=100_000)]
    params: list[str | int | float | bool | None] = msgspec.field(default_factory=list)


class InventoryReport(Request):
    name: Literal["capacity", "consumers"]


def need_admin(caller: Caller, what: str) -> None:
    if not caller.is_admin:
        raise errors.Forbidden(f"{what} is admin only")


MAX_USER_DATA = 65535


def check_user_data(text: str | None) -> str | None:
    """user_data must be base64 of at most 64 KiB, as Nova's; returned as given."""
    if text is None:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise errors.BadRequest("user_data: not valid base64") from None
    if len(raw) > MAX_USER_DATA:
        raise errors.BadRequest(f"user_data: {len(raw)} bytes, at most {MAX_USER_DATA}")
    return text


def addresses(s: Server) -> dict[str, list[dict]]:
    """Nova's "addresses": network name -> its addresses on that network."""
    out: dict[str, list[dict]] = {}
    for v in s.network_info:
        out.setdefault(v.network_name, []).append(
            {"addr": v.ip, "version": 4, "mac_addr": v.mac, "port_id": v.port_id}
        )
    return out


def server_view(s: Server, caller: Caller) -> dict:
    view = {
        "id": s.id,
        "name": s.name,
        "status": states.status(s.vm_state, s.task_state),
        "vm_state": s.vm_state,
        "task_state": s.task_state,
        "power_state": s.power_state,
        "flavor": {"id": s.flavor.id, "name": s.flavor.name},
        "image": {"id": s.image_id, "name": s.image_name},
        "availability_zone": s.availability_zone,
        "project": s.project,
        "user": s.user,
        "metadata": s.metadata,
        "reservation_id": s.reservation_id,
        "addresses": addresses(s),
        "key_name": s.key_name,
        "config_drive": s.config_drive,
        "locked": s.locked_by is not None,
        "locked_by": s.locked_by,
        "locked_reason": s.locked_reason,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "launched_at": s.launched_at,
    }
    if s.fault is not None:
        view["fault"] = msgspec.to_builtins(s.fault)
    if caller.is_admin:
        view["host"] = s.host
    return view


class ApiService:
    def __init__(self, nc: Client, cfg: Config) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = cfg
        self.store: Store | None = None
        self.index = Index(service_down_time=cfg.DEFAULT.service_down_time)
        self.service = MicroService(
            nc,
            name="hvmesh-api",
            version=VERSION,
            description="hvmesh compute API: flavors, images, servers, hypervisors.",
            metadata={
                "min_version": MIN_MICROVERSION,
                "max_version": MAX_MICROVERSION,
                "host": socket.gethostname(),
            },
        )
        ep = self.service.endpoint
        ep("flavors-create", "hvmesh.api.flavors.create", self.flavor_create, FlavorCreate)
        ep("flavors-list", "hvmesh.api.flavors.list", self.flavor_list, Empty)
        ep("flavors-get", "hvmesh.api.flavors.get", self.flavor_get, Ref)
        ep("flavors-delete", "hvmesh.api.flavors.delete", self.flavor_delete, Ref)
        ImageEndpoints(self).register()
        self.net = NetworkEndpoints(self)
        self.net.register()
        ep("servers-create", "hvmesh.api.servers.create", self.server_create, ServerCreate)
        ComputeEndpoints(self).register()  # servers.list, hypervisors.get, zones, services
        ep("servers-get", "hvmesh.api.servers.get", self.server_get, IdOnly)
        ep("servers-delete", "hvmesh.api.servers.delete", self.server_delete, IdOnly)
        acts = ServerActions(self)
        ep("servers-action", "hvmesh.api.servers.action", acts.action, ServerAction)
        ep("servers-events-list", "hvmesh.api.servers.events.list", acts.events_list, ServerRef)
        ep("servers-events-get", "hvmesh.api.servers.events.get", acts.events_get, ActionRef)
        ep("hypervisors-list", "hvmesh.api.hypervisors.list", self.hypervisor_list, Empty)
        ep(
            "server-groups-create",
            "hvmesh.api.server_groups.create",
            self.group_create,
            ServerGroupCreate,
        )
        ep("server-groups-list", "hvmesh.api.server_groups.list", self.group_list, Empty)
        ep("server-groups-get", "hvmesh.api.server_groups.get", self.group_get, IdOnly)
        ep("server-groups-delete", "hvmesh.api.server_groups.delete", self.group_delete, IdOnly)
        ep("aggregates-create", "hvmesh.api.aggregates.create", self.agg_create, AggregateCreate)
        ep("aggregates-list", "hvmesh.api.aggregates.list", self.agg_list, Empty)
        ep("aggregates-get", "hvmesh.api.aggregates.get", self.agg_get, Ref)
        ep("aggregates-delete", "hvmesh.api.aggregates.delete", self.agg_delete, Ref)
        ep(
            "aggregates-add-host",
            "hvmesh.api.aggregates.add_host",
            self.agg_add_host,
            AggregateHost,
        )
        ep(
            "aggregates-remove-host",
            "hvmesh.api.aggregates.remove_host",
            self.agg_remove_host,
            AggregateHost,
        )
        ep(
            "aggregates-set-metadata",
            "hvmesh.api.aggregates.set_metadata",
            self.agg_set_metadata,
            AggregateMetadata,
        )
        ep("inventory-query", "hvmesh.api.inventory.query", self.inventory_query, InventoryQuery)
        ep(
            "inventory-report",
            "hvmesh.api.inventory.report",
            self.inventory_report,
            InventoryReport,
        )

    need_admin = staticmethod(need_admin)

    @property
    def st(self) -> Store:
        assert self.store is not None
        return self.store

    async def start(self) -> None:
        self.store = await Store(self.js).open()
        await self.index.start(self.store)
        await self.service.start()
        LOG.info("api.started")

    async def stop(self) -> None:
        await self.service.stop()
        await self.index.stop()

    # --- lookups --------------------------------------------------------------------------

    @staticmethod
    def check_ref(ref: Ref, what: str) -> None:
        if not ref.id and not ref.name:
            raise errors.BadRequest(f"give the {what}'s id or name")

    async def find_flavor(self, ref: str, caller: Caller) -> Flavor:
        """A flavor by id or unique name; private flavors only for the admin project."""
        return await _by_id_or_name(
            self.st.flavors, ref, "flavor", lambda f: f.is_public or caller.is_admin
        )

    def visible_image(self, image: Image, caller: Caller) -> bool:
        return caller.is_admin or image.visibility == "public" or image.project == caller.project

    async def find_image(self, ref: str, caller: Caller) -> Image:
        return await _by_id_or_name(
            self.st.images, ref, "image", lambda i: self.visible_image(i, caller)
        )

    async def own_server(self, server_id: str, caller: Caller) -> Server:
        return await _owned(self.st.servers, server_id, "server", caller)

    # --- flavors --------------------------------------------------------------------------

    async def flavor_create(self, caller: Caller, req: FlavorCreate) -> dict:
        need_admin(caller, "creating flavors")
        try:
            custom = custom_resources(req.extra_specs)
        except ValueError as exc:
            raise errors.BadRequest(f"extra_specs: {exc}") from None
        if any(n < 1 for n in custom.values()):
            raise errors.BadRequest("extra_specs: resources:CUSTOM_* amounts must be 1 or more")
        if any(f.name == req.name for f in await self.st.flavors.values()):
            raise errors.Conflict(f"a flavor named {req.name!r} exists")
        flavor = Flavor(
            id=req.id or new_id(),
            name=req.name,
            vcpus=req.vcpus,
            ram_mb=req.ram_mb,
            disk_gb=req.disk_gb,
            extra_specs=req.extra_specs,
            is_public=req.is_public,
        )
        try:
            await self.st.flavors.create(flavor.id, flavor)
        except CasConflict:
            raise errors.Conflict(f"flavor id {flavor.id} exists") from None
        return {"flavor": flavor}

    async def flavor_list(self, caller: Caller, req: Empty) -> dict:
        flavors = [f for f in await self.st.flavors.values() if f.is_public or caller.is_admin]
        return {"flavors": sorted(flavors, key=lambda f: (f.ram_mb, f.name))}

    async def flavor_get(self, caller: Caller, req: Ref) -> dict:
        self.check_ref(req, "flavor")
        return {"flavor": await self.find_flavor(req.id or req.name or "", caller)}

    async def flavor_delete(self, caller: Caller, req: Ref) -> dict:
        need_admin(caller, "deleting flavors")
        self.check_ref(req, "flavor")
        flavor = await self.find_flavor(req.id or req.name or "", caller)
        await self.st.flavors.delete(flavor.id)
        return {"deleted": flavor.id}

    # --- servers --------------------------------------------------------------------------

    async def server_create(self, caller: Caller, req: ServerCreate) -> dict:
        flavor = await self.resolve(self.find_flavor(req.flavor, caller), "flavor")
        image = await self.resolve(self.find_image(req.image, caller), "image")
        if image.status != "active":
            raise errors.BadRequest(f"image {image.name} is {image.status}: upload its data first")
        self.check_fits(flavor, image)
        if req.availability_zone is not None:
            zones = {self.index.zone_of(name) for name in self.index.hosts}
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
        public_key = None
        if req.key_name is not None:
            try:
                public_key = (await self.net.find_keypair(req.key_name, caller)).public_key
            except errors.NotFound as exc:
                raise errors.BadRequest(f"key_name: {exc.message}") from None
        ids = [new_id() for _ in range(count)]
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
                if await self.st.servers.get(server_id) is None:
                    for v in vifs:
                        await ports.let_go(self.st, server_id, v.port_id)
            raise

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
        group_id = req.scheduler_hints.group
        if group_id:
            try:
                group_id = await self.join_group(group_id, ids, caller)
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
                self.st, server.id, request_id, "create", caller.project, caller.user
            )
            await self.st.servers.create(server.id, server)
        await publish_task(
            self.js,
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

    @staticmethod
    async def resolve(lookup, what: str):  # type: ignore[no-untyped-def]
        """A lookup of a record a request refers to: not found there is a 400."""
        try:
            return await lookup
        except errors.NotFound as exc:
            raise errors.BadRequest(f"{what}: {exc.message}") from None

    @staticmethod
    def check_fits(flavor: Flavor, image: Image) -> None:
        """400 when the image needs more RAM or disk than the flavor gives."""
        if image.min_ram_mb > flavor.ram_mb:
            raise errors.BadRequest(
                f"flavor {flavor.name} has {flavor.ram_mb} MB RAM; image {image.name} needs "
                f"{image.min_ram_mb}"
            )
        if image.min_disk_gb > flavor.disk_gb:
            raise errors.BadRequest(
                f"flavor {flavor.name} has a {flavor.disk_gb} GB disk; image {image.name} needs "
                f"{image.min_disk_gb}"
            )

    @staticmethod
    def view(s: Server, caller: Caller) -> dict:
        return server_view(s, caller)

    async def server_get(self, caller: Caller, req: IdOnly) -> dict:
        return {"server": server_view(await self.own_server(req.id, caller), caller)}

    async def server_delete(self, caller: Caller, req: IdOnly) -> dict:
        """Delete at any point, also mid-build or mid-action: the delete supersedes it."""
        server = await self.own_server(req.id, caller)
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

        written = await self.st.servers.mutate(server.id, to_deleting)
        if written is None:
            raise errors.NotFound(f"server {req.id} not found")
        if written.value.request_id == request_id:
            await action_log.start(
                self.st, server.id, request_id, "delete", caller.project, caller.user
            )
            await notify.updated(self.nc, server, written.value)
            for old in superseded:  # the build or action the delete cuts short
                await action_log.finish(self.st, server.id, old, error="superseded by delete")
        await publish_task(self.js, Task(kind="delete", server_id=server.id, request_id=request_id))
        return {"server": server_view(written.value, caller)}

    # --- server groups --------------------------------------------------------------------

    async def own_group(self, group_id: str, caller: Caller) -> ServerGroup:
        return await _owned(self.st.server_groups, group_id, "server group", caller)

    async def group_create(self, caller: Caller, req: ServerGroupCreate) -> dict:
        if req.max_server_per_host != 1 and req.policy != "anti-affinity":
            raise errors.BadRequest(
                "max_server_per_host is a rule of the anti-affinity policy only"
            )
        group = ServerGroup(
            id=new_id(),
            name=req.name,
            project=caller.project,
            user=caller.user,
            policy=req.policy,
            max_server_per_host=req.max_server_per_host,
        )
        await self.st.server_groups.create(group.id, group)
        return {"server_group": group}

    async def group_list(self, caller: Caller, req: Empty) -> dict:
        groups = [
            g
            for g in await self.st.server_groups.values()
            if caller.is_admin or g.project == caller.project
        ]
        return {"server_groups": sorted(groups, key=lambda g: (g.created_at, g.id))}

    async def group_get(self, caller: Caller, req: IdOnly) -> dict:
        return {"server_group": await self.own_group(req.id, caller)}

    async def group_delete(self, caller: Caller, req: IdOnly) -> dict:
        group = await self.own_group(req.id, caller)
        await self.st.server_groups.delete(group.id)
        return {"deleted": group.id}

    async def join_group(self, group_id: str, server_ids: list[str], caller: Caller) -> str:
        """Add new servers to their group (id or name) before they are scheduled, so members
        see each other; the group's id."""
        group = await self.own_group(group_id, caller)

        def add(g: ServerGroup) -> ServerGroup:
            return msgspec.structs.replace(g, members=[*g.members, *server_ids])

        if await self.st.server_groups.mutate(group.id, add) is None:
            raise errors.NotFound(f"server group {group_id} not found")
        return group.id

    # --- aggregates -----------------------------------------------------------------------

    async def find_aggregate(self, ref: str) -> Aggregate:
        return await _by_id_or_name(self.st.aggregates, ref, "aggregate", lambda a: True)

    async def agg_create(self, caller: Caller, req: AggregateCreate) -> dict:
        need_admin(caller, "managing aggregates")
        if any(a.name == req.name for a in await self.st.aggregates.values()):
            raise errors.Conflict(f"an aggregate named {req.name!r} exists")
        metadata = dict(req.metadata)
        if req.availability_zone:
            metadata["availability_zone"] = req.availability_zone
        aggregate = Aggregate(id=new_id(), name=req.name, metadata=metadata)
        await self.st.aggregates.create(aggregate.id, aggregate)
        return {"aggregate": aggregate}

    async def agg_list(self, caller: Caller, req: Empty) -> dict:
        need_admin(caller, "listing aggregates")
        return {"aggregates": sorted(await self.st.aggregates.values(), key=lambda a: a.name)}

    async def agg_get(self, caller: Caller, req: Ref) -> dict:
        need_admin(caller, "reading aggregates")
        self.check_ref(req, "aggregate")
        return {"aggregate": await self.find_aggregate(req.id or req.name or "")}

    async def agg_delete(self, caller: Caller, req: Ref) -> dict:
        need_admin(caller, "managing aggregates")
        self.check_ref(req, "aggregate")
        aggregate = await self.find_aggregate(req.id or req.name or "")
        if aggregate.hosts:
            raise errors.Conflict(f"aggregate {aggregate.name} still has hosts: remove them first")
        await self.st.aggregates.delete(aggregate.id)
        return {"deleted": aggregate.id}

    async def _change_aggregate(self, ref: str, change: Any) -> dict:
        """Apply `change(aggregate) -> aggregate` with compare-and-set; it raises to refuse."""
        aggregate = await self.find_aggregate(ref)
        written = await self.st.aggregates.mutate(aggregate.id, change)
        if written is None:
            raise errors.NotFound(f"aggregate {ref} not found")
        self.index.apply_aggregate(written.key, written.value)  # read-your-writes for zones
        return {"aggregate": written.value}

    async def agg_add_host(self, caller: Caller, req: AggregateHost) -> dict:
        need_admin(caller, "managing aggregates")
        if req.host not in self.index.hosts:
            raise errors.NotFound(f"host {req.host} not found")
        zone = (await self.find_aggregate(req.id)).availability_zone
        if zone:
            for other in await self.st.aggregates.values():
                if req.host in other.hosts and other.availability_zone not in (None, zone):
                    raise errors.Conflict(
                        f"host {req.host} is in aggregate {other.name}, availability zone "
                        f"{other.availability_zone}; a host has one zone"
                    )

        def add(a: Aggregate) -> Aggregate:
            if req.host in a.hosts:
                raise errors.Conflict(f"host {req.host} is already in aggregate {a.name}")
            return msgspec.structs.replace(a, hosts=[*a.hosts, req.host])

        return await self._change_aggregate(req.id, add)

    async def agg_remove_host(self, caller: Caller, req: AggregateHost) -> dict:
        need_admin(caller, "managing aggregates")

        def remove(a: Aggregate) -> Aggregate:
            if req.host not in a.hosts:
                raise errors.NotFound(f"host {req.host} is not in aggregate {a.name}")
            return msgspec.structs.replace(a, hosts=[h for h in a.hosts if h != req.host])

        return await self._change_aggregate(req.id, remove)

    async def agg_set_metadata(self, caller: Caller, req: AggregateMetadata) -> dict:
        need_admin(caller, "managing aggregates")

        def update(a: Aggregate) -> Aggregate:
            metadata = dict(a.metadata)
            for key, value in req.metadata.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            return msgspec.structs.replace(a, metadata=metadata)

        return await self._change_aggregate(req.id, update)

    # --- inventory ------------------------------------------------------------------------

    async def inventory_query(self, caller: Caller, req: InventoryQuery) -> dict:
        need_admin(caller, "querying the inventory")
        result = await reports.query(
            self.index, await self.st.servers.values(), req.sql, req.params
        )
        return {"query": result}

    async def inventory_report(self, caller: Caller, req: InventoryReport) -> dict:
        need_admin(caller, "reading inventory reports")
        description, sql = reports.REPORTS[req.name]
        result = await reports.query(self.index, await self.st.servers.values(), sql, [])
        return {
            "report": {"name": req.name, "description": description, **msgspec.to_builtins(result)}
        }

    # --- hypervisors ----------------------------------------------------------------------

    async def hypervisor_list(self, caller: Caller, req: Empty) -> dict:
        need_admin(caller, "listing hypervisors")
        out = []
        for name in sorted(self.index.hosts):
            host = self.index.hosts[name].value

            def inv(rc: str, h=host) -> int:
                i = h.inventories.get(rc)
                return i.total if i else 0

            out.append(
                {
                    "name": name,
                    "state": "up" if self.index.is_up(name) else "down",
                    "status": host.status,
                    "availability_zone": self.index.zone_of(name),
                    "hypervisor_type": host.hypervisor_type,
                    "vcpus": inv("VCPU"),
                    "vcpus_used": host.used("VCPU"),
                    "memory_mb": inv("MEMORY_MB"),
                    "memory_mb_used": host.used("MEMORY_MB"),
                    "local_gb": inv("DISK_GB"),
                    "local_gb_used": host.used("DISK_GB"),
                    "running_vms": len(host.allocations),
                }
            )
        return {"hypervisors": out}


Named = TypeVar("Named", Flavor, Image, Aggregate)
Owned = TypeVar("Owned", Server, ServerGroup, Port)


async def _by_id_or_name(
    bucket: Bucket[Named], ref: str, what: str, visible: Callable[[Named], bool]
) -> Named:
    """The record keyed `ref`, else the one record named `ref`, of those `visible` admits."""
    entry = await bucket.get(ref) if _is_key(ref) else None
    if entry is not None and visible(entry.value):
        return entry.value
    matches = [r for r in await bucket.values() if r.name == ref and visible(r)]
    if len(matches) > 1:
        raise errors.Conflict(f"more than one {what} is named {ref!r}; use its id")
    if not matches:
        raise errors.NotFound(f"{what} {ref} not found")
    return matches[0]


async def _owned(bucket: Bucket[Owned], ref: str, what: str, caller: Caller) -> Owned:
    """The record keyed `ref` if it is the caller's project's (or the caller is admin),
    else the one record of the caller's own project named `ref`.

    A name is looked up in the caller's project only, the admin's too; several records of
    that name are a 409 listing their ids. Another project's record is "not found", never
    "forbidden": its existence is not told.
    """
    entry = await bucket.get(ref) if _is_key(ref) else None
    if entry is not None and (caller.is_admin or entry.value.project == caller.project):
        return entry.value
    matches = sorted(
        (r for r in await bucket.values() if r.name == ref and r.project == caller.project),
        key=lambda r: (r.created_at, r.id),
    )
    if len(matches) > 1:
        ids = ", ".join(r.id for r in matches)
        raise errors.Conflict(f"more than one {what} is named {ref!r}: {ids}; use an id")
    if not matches:
        raise errors.NotFound(f"{what} {ref} not found")
    return matches[0]


def _is_key(text: str) -> bool:
    """Whether `text` can be a KV key (names with spaces cannot)."""
    return (
        bool(text) and all(c.isalnum() or c in "-_=./" for c in text) and not text.startswith(".")
    )
