"""Networks made over REST that have no subnet yet, kept in the NATS KV bucket `rest_networks`.

An hvmesh network is born with its CIDR (hvmesh.api.networks.create needs one and a
network cannot be changed), while Neutron's clients make a network first and its subnet
after. So `POST /networks` records the network's attributes here, under a new id, and
`POST /subnets` on it creates the hvmesh network under the same id and drops the record.
Deleting a network's subnet turns it back into a record here, so a network keeps its id
from its creation to its deletion. Only the admin makes networks (hvmesh's policy), so these records are written
and read on the admin's own connection, in the HVMESH account: every REST process sees
the same ones, and none is held in memory. Tenants never see a network without a subnet.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError

from hvmesh.core.protocol.base import new_id, now

BUCKET = "rest_networks"


class Pending(msgspec.Struct, kw_only=True):
    """A network's attributes until its subnet is made."""

    id: str
    name: str
    project: str
    shared: bool = False
    mtu: int = 1500
    physical_network: str = "physnet1"
    network_type: str = "flat"
    segmentation_id: int | None = None
    created_at: float = 0.0


def new(name: str, project: str, ident: str | None = None, **attrs: Any) -> Pending:
    return Pending(id=ident or new_id(), name=name, project=project, created_at=now(), **attrs)


def as_network(p: Pending) -> dict[str, Any]:
    """The record in the shape of hvmesh.api.networks' networks (without a CIDR)."""
    return {**msgspec.to_builtins(p), "cidr": None}


class PendingNetworks:
    """The bucket on one (admin) NATS connection."""

    def __init__(self, nc: Any, replicas: int = 1) -> None:
        self.js = nc.jetstream()
        self.replicas = replicas  # copies of the bucket, when this makes it

    async def _kv(self, create: bool = False) -> Any:
        try:
            return await self.js.key_value(BUCKET)
        except (BucketNotFoundError, NotFoundError):
            if not create:
                return None
            config = KeyValueConfig(
                bucket=BUCKET,
                history=1,
                storage=StorageType.FILE,
                description="hvmesh rest: networks without a subnet yet",
                replicas=self.replicas,
            )
            return await self.js.create_key_value(config)

    async def ensure(self) -> None:
        """Make the bucket now if it does not exist yet."""
        await self._kv(create=True)

    async def all(self) -> list[Pending]:
        kv = await self._kv()
        if kv is None:
            return []
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        found = [await self.get(key) for key in keys]
        return sorted((p for p in found if p is not None), key=lambda p: (p.name, p.id))

    async def get(self, ident: str) -> Pending | None:
        kv = await self._kv()
        if kv is None:
            return None
        try:
            entry = await kv.get(ident)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=Pending)

    async def put(self, pending: Pending) -> None:
        kv = await self._kv(create=True)
        await kv.put(pending.id, msgspec.json.encode(pending))

    async def drop(self, ident: str) -> None:
        kv = await self._kv()
        if kv is not None:
            await kv.purge(ident)
