"""The record indexes the API's list endpoints read: each list's order and who sees what.

One index per listed bucket, started and stopped with the API service (servers have
theirs in compute.py). Each keeps its records in the list's order and grouped by who
may see them, so a tenant's page walks only its own records and the shared ones:

- networks by (name, id), per project and in SHARED when shared;
- ports by (network, address, id), per project;
- keypairs by (name, id), per (project, user), markers being names;
- server groups by (created_at, id), per project;
- flavors by (ram, name, id), in PUBLIC when public (the admin walks them all);
- images by (name, id), per project and in PUBLIC when public;
- aggregates by (name, id) (the admin's alone).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hvmesh.core.protocol.records import (
    Aggregate,
    Flavor,
    Image,
    Keypair,
    Network,
    Port,
    ServerGroup,
)
from hvmesh.core.state.record_index import Groups, RecordIndex, SortKey
from hvmesh.core.state.store import Bucket, Store

SHARED = ("shared",)  # the group of shared networks (a tuple: never a project's name)
PUBLIC = ("public",)  # the group of public images and flavors


def network_groups(n: Network) -> Groups:
    return (n.project, SHARED) if n.shared else (n.project,)


def flavor_groups(f: Flavor) -> Groups:
    return (PUBLIC,) if f.is_public else ()


def image_groups(i: Image) -> Groups:
    return (i.project, PUBLIC) if i.visibility == "public" else (i.project,)


def by_name(record: Network | Image | Aggregate) -> SortKey:
    return (record.name, record.id)


def port_order(p: Port) -> SortKey:
    return (p.network_id, p.ip, p.id)


def keypair_order(k: Keypair) -> SortKey:
    return (k.name, k.id)


def keypair_groups(k: Keypair) -> Groups:
    return ((k.project, k.user),)


def group_order(g: ServerGroup) -> SortKey:
    return (g.created_at, g.id)


def project_of(record: Port | ServerGroup) -> Groups:
    return (record.project,)


def flavor_order(f: Flavor) -> SortKey:
    return (f.ram_mb, f.name, f.id)


class ListIndexes:
    """The indexes of every listed bucket but the servers'."""

    def __init__(self) -> None:
        self.networks = RecordIndex[Network]("network_index", by_name, network_groups)
        self.ports = RecordIndex[Port]("port_index", port_order, project_of)
        self.keypairs = RecordIndex[Keypair](
            "keypair_index", keypair_order, keypair_groups, ident=lambda k: k.name
        )
        self.server_groups = RecordIndex[ServerGroup]("group_index", group_order, project_of)
        self.flavors = RecordIndex[Flavor]("flavor_index", flavor_order, flavor_groups)
        self.images = RecordIndex[Image]("image_index", by_name, image_groups)
        self.aggregates = RecordIndex[Aggregate]("aggregate_index", by_name)

    def _pairs(self, store: Store) -> list[tuple[RecordIndex[Any], Bucket[Any]]]:
        return [
            (self.networks, store.networks),
            (self.ports, store.ports),
            (self.keypairs, store.keypairs),
            (self.server_groups, store.server_groups),
            (self.flavors, store.flavors),
            (self.images, store.images),
            (self.aggregates, store.aggregates),
        ]

    async def start(self, store: Store) -> None:
        """Watch every listed bucket; returns once all are loaded."""
        await asyncio.gather(*(index.start(bucket) for index, bucket in self._pairs(store)))

    async def stop(self) -> None:
        for index in (
            self.networks,
            self.ports,
            self.keypairs,
            self.server_groups,
            self.flavors,
            self.images,
            self.aggregates,
        ):
            await index.stop()
