"""The API service "hvmesh-api": JSON request/reply on hvmesh.api.<resource>.<verb>.

Each endpoint validates its body (msgspec), checks policy, writes records with
compare-and-set and answers Nova-style wrapped JSON ({"server": {...}}). Records are
scoped to the caller's project, which comes from the server-stamped Nats-Request-Info
header; the admin project sees everything.

This module wires the endpoints together: each subject's handler lives in the module of
its resource (servers.py: a boot starts there; flavors.py, images.py, networks.py,
groups.py, aggregates.py, hypervisors.py, compute.py for listings, server_actions.py).
"""

from __future__ import annotations

import socket

from nats.aio.client import Client

from hvmesh.core import log
from hvmesh.core.api.aggregates import AggregateEndpoints
from hvmesh.core.api.compute import ComputeEndpoints, ServerList
from hvmesh.core.api.consoles import ConsoleEndpoints
from hvmesh.core.api.flavors import FlavorEndpoints, FlavorList
from hvmesh.core.api.groups import ServerGroupEndpoints
from hvmesh.core.api.hypervisors import (
    HypervisorEndpoints,
    HypervisorList,
    InventoryQuery,
    InventoryReport,
)
from hvmesh.core.api.images import ImageEndpoints, ImageList
from hvmesh.core.api.list_indexes import ListIndexes
from hvmesh.core.api.migrations import MigrationEndpoints, MigrationList
from hvmesh.core.api.networks import KeypairRef, NetworkEndpoints, PortRef
from hvmesh.core.api.paging import Page
from hvmesh.core.api.policy_rules.enforcer import Policy
from hvmesh.core.api.quotas import ProjectName, ProjectRef, QuotaEndpoints, QuotaSet
from hvmesh.core.api.requests import Empty, IdOnly, Ref
from hvmesh.core.api.server_actions import ActionRef, ServerActions, ServerEventList
from hvmesh.core.api.servers import ServerEndpoints
from hvmesh.core.api.site_inbox import SiteInbox
from hvmesh.core.api.sites import SiteEndpoints, SiteRef
from hvmesh.core.api.usage import UsageEndpoints, UsageShow
from hvmesh.core.bus import microversion
from hvmesh.core.bus.micro import MicroService, Raw
from hvmesh.core.config import Config
from hvmesh.core.protocol import limits, subjects
from hvmesh.core.protocol.action_requests import ServerAction
from hvmesh.core.protocol.consoles import ServerConsole
from hvmesh.core.protocol.requests import (
    AggregateCreate,
    AggregateHost,
    AggregateMetadata,
    FlavorCreate,
    FlavorExtraSpecs,
    ImageCreate,
    ImageUpdate,
    ImageUploadFinish,
    KeypairCreate,
    NetworkCreate,
    PortCreate,
    ServerCreate,
    ServerGroupCreate,
    ServerUpdate,
    ServiceSet,
)
from hvmesh.core.protocol.sites import SiteJoin, SiteOutcome
from hvmesh.core.protocol.version import VERSION
from hvmesh.core.state.inventory import Index
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

# The microversions a request may ask for in its Hvmesh-API-Version header (docs/api.md
# lists what each added).
MIN_MICROVERSION = "1.0"
MAX_MICROVERSION = "1.1"


class ApiService:
    """The micro service: its connection, store and index (an ApiContext for the
    endpoints), and every endpoint registered on its subject."""

    def __init__(self, nc: Client, cfg: Config) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = cfg
        self.store: Store | None = None
        self.index = Index(service_down_time=cfg.DEFAULT.service_down_time)
        self.lists = ListIndexes()  # what list endpoints read, besides servers
        self.policy = Policy(cfg.policy)  # a bad policy file or role stops the API here
        self.service = MicroService(
            nc,
            name=subjects.API_SERVICE,
            version=VERSION,
            description="hvmesh compute API: flavors, images, servers, hypervisors.",
            max_request_bytes=limits.MAX_REQUEST_BYTES,
            metadata={
                "min_version": MIN_MICROVERSION,
                "max_version": MAX_MICROVERSION,
                "version_header": microversion.HEADER,
                "host": socket.gethostname(),
            },
            versions=microversion.VersionRange(MIN_MICROVERSION, MAX_MICROVERSION),
            roles=self.policy.roles,
            guard=self.policy.guard,
        )
        self.flavors = FlavorEndpoints(self)
        self.images = ImageEndpoints(self)
        self.networks = NetworkEndpoints(self)
        self.groups = ServerGroupEndpoints(self)
        self.compute = ComputeEndpoints(self)
        # The core keeps a view of every site and routes creates to them; a site ([site]
        # name) takes what the core queued for it (docs/sites.md).
        self.sites = None if cfg.site.name else SiteEndpoints(self, self.compute.servers_index)
        self.compute.sites = self.sites
        self.servers = ServerEndpoints(self, self.networks, self.groups, self.sites)
        self.actions = ServerActions(self, self.networks, self.sites)
        self.inbox = SiteInbox(self, self.servers, self.actions) if cfg.site.name else None
        self.hypervisors = HypervisorEndpoints(self)
        self.aggregates = AggregateEndpoints(self)
        self.quotas = QuotaEndpoints(self)
        self.usage = UsageEndpoints(self)
        self._register()
        self.policy.require(ep.name for ep in self.service.info().endpoints)

    def _register(self) -> None:
        """Every endpoint: its name, subject, handler and request body type."""
        ep = self.service.endpoint
        flavors, images, net = self.flavors, self.images, self.networks
        servers, compute, acts = self.servers, self.compute, self.actions
        hyp, groups, aggs = self.hypervisors, self.groups, self.aggregates
        api = subjects.api
        # flavors
        ep("flavors-create", api("flavors", "create"), flavors.flavor_create, FlavorCreate)
        ep("flavors-list", api("flavors", "list"), flavors.flavor_list, FlavorList)
        ep("flavors-get", api("flavors", "get"), flavors.flavor_get, Ref)
        ep("flavors-delete", api("flavors", "delete"), flavors.flavor_delete, Ref)
        ep(
            "flavors-set-extra-specs",
            api("flavors", "set_extra_specs"),
            flavors.flavor_set_extra_specs,
            FlavorExtraSpecs,
        )
        # images
        ep("images-create", api("images", "create"), images.create, ImageCreate)
        ep("images-list", api("images", "list"), images.list, ImageList)
        ep("images-get", api("images", "get"), images.get, Ref)
        ep("images-update", api("images", "update"), images.update, ImageUpdate)
        ep("images-delete", api("images", "delete"), images.delete, Ref)
        ep("images-upload", api("images", "upload"), images.upload, Raw)
        ep(
            "images-upload-finish",
            api("images", "upload_finish"),
            images.finish,
            ImageUploadFinish,
        )
        # networks, ports, keypairs
        ep("networks-create", api("networks", "create"), net.network_create, NetworkCreate)
        ep("networks-list", api("networks", "list"), net.network_list, Page)
        ep("networks-get", api("networks", "get"), net.network_get, Ref)
        ep("networks-delete", api("networks", "delete"), net.network_delete, Ref)
        ep("ports-create", api("ports", "create"), net.port_create, PortCreate)
        ep("ports-list", api("ports", "list"), net.port_list, Page)
        ep("ports-get", api("ports", "get"), net.port_get, PortRef)
        ep("ports-delete", api("ports", "delete"), net.port_delete, PortRef)
        ep("keypairs-create", api("keypairs", "create"), net.keypair_create, KeypairCreate)
        ep("keypairs-list", api("keypairs", "list"), net.keypair_list, Page)
        ep("keypairs-get", api("keypairs", "get"), net.keypair_get, KeypairRef)
        ep("keypairs-delete", api("keypairs", "delete"), net.keypair_delete, KeypairRef)
        # servers (a boot starts at servers.create), listings, zones, services
        ep("servers-create", api("servers", "create"), servers.server_create, ServerCreate)
        ep("servers-list", api("servers", "list"), compute.server_list, ServerList)
        ep("hypervisors-get", api("hypervisors", "get"), hyp.hypervisor_get, Ref)
        ep("availability-zones-list", api("availability_zones", "list"), compute.zones, Empty)
        ep("services-list", api("services", "list"), compute.services, Empty)
        ep("services-set", api("services", "set"), hyp.service_set, ServiceSet)
        ep("servers-get", api("servers", "get"), servers.server_get, IdOnly)
        ep("servers-update", api("servers", "update"), servers.server_update, ServerUpdate)
        ep("servers-delete", api("servers", "delete"), servers.server_delete, IdOnly)
        consoles = ConsoleEndpoints(self, self.sites)
        ep("servers-console", api("servers", "console"), consoles.server_console, ServerConsole)
        # server actions and their log
        ep("servers-action", api("servers", "action"), acts.action, ServerAction)
        ep(
            "servers-events-list",
            api("servers", "events.list"),
            acts.events_list,
            ServerEventList,
        )
        ep("servers-events-get", api("servers", "events.get"), acts.events_get, ActionRef)
        # hypervisors
        ep("hypervisors-list", api("hypervisors", "list"), hyp.hypervisor_list, HypervisorList)
        migrations = MigrationEndpoints(self)
        ep("migrations-list", api("migrations", "list"), migrations.list, MigrationList)
        # server groups
        ep(
            "server-groups-create",
            api("server_groups", "create"),
            groups.group_create,
            ServerGroupCreate,
        )
        ep("server-groups-list", api("server_groups", "list"), groups.group_list, Page)
        ep("server-groups-get", api("server_groups", "get"), groups.group_get, IdOnly)
        ep("server-groups-delete", api("server_groups", "delete"), groups.group_delete, IdOnly)
        # aggregates
        ep("aggregates-create", api("aggregates", "create"), aggs.agg_create, AggregateCreate)
        ep("aggregates-list", api("aggregates", "list"), aggs.agg_list, Page)
        ep("aggregates-get", api("aggregates", "get"), aggs.agg_get, Ref)
        ep("aggregates-delete", api("aggregates", "delete"), aggs.agg_delete, Ref)
        ep(
            "aggregates-add-host",
            api("aggregates", "add_host"),
            aggs.agg_add_host,
            AggregateHost,
        )
        ep(
            "aggregates-remove-host",
            api("aggregates", "remove_host"),
            aggs.agg_remove_host,
            AggregateHost,
        )
        ep(
            "aggregates-set-metadata",
            api("aggregates", "set_metadata"),
            aggs.agg_set_metadata,
            AggregateMetadata,
        )
        # inventory
        ep("inventory-query", api("inventory", "query"), hyp.inventory_query, InventoryQuery)
        ep("inventory-report", api("inventory", "report"), hyp.inventory_report, InventoryReport)
        # quotas, limits and usage
        quotas = self.quotas
        ep("quotas-show", api("quotas", "show"), quotas.show, ProjectRef)
        ep("quotas-set", api("quotas", "set"), quotas.set, QuotaSet)
        ep("quotas-delete", api("quotas", "delete"), quotas.delete, ProjectName)
        ep("quotas-defaults", api("quotas", "defaults"), quotas.defaults, Empty)
        ep("limits-show", api("limits", "show"), quotas.limits, ProjectRef)
        ep("usage-show", api("usage", "show"), self.usage.show, UsageShow)
        # sites, at the core: what operators ask, and what sites send
        if self.sites is not None:
            sites = self.sites
            ep("sites-list", api("sites", "list"), sites.list, Empty)
            ep("sites-delete", api("sites", "delete"), sites.delete, SiteRef)
            ep("sites-join", subjects.SITE_JOIN, sites.join, SiteJoin)
            ep("sites-outcome", subjects.SITE_OUTCOME, sites.outcome, SiteOutcome)

    @property
    def st(self) -> Store:
        assert self.store is not None
        return self.store

    async def start(self) -> None:
        self.store = await Store(self.js, replicas=self.cfg.nats.replicas).open()
        await self.index.start(self.store)
        await self.compute.servers_index.start(self.store.servers)
        await self.lists.start(self.store)
        if self.sites is not None:
            await self.sites.start()
        await self.service.start()
        if self.inbox is not None:
            await self.inbox.start()
        LOG.info("api.started")

    async def stop(self) -> None:
        if self.inbox is not None:
            await self.inbox.stop()
        await self.service.stop()
        if self.sites is not None:
            await self.sites.stop()
        await self.index.stop()
        await self.compute.servers_index.stop()
        await self.lists.stop()
