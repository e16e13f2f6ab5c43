"""The API's networking and keypair endpoints, and the interfaces a new server gets.

hvmesh.api.networks.{create,list,get,delete}, hvmesh.api.ports.{create,list,get,delete},
hvmesh.api.keypairs.{create,list,get,delete}. Networks are made by the admin (they map to
physical networks on the hosts) and are visible to their project, or to all when shared.
Ports take their address from hvmesh's IPAM (core/state/ipam.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated

from msgspec import Meta

from hvmesh.core import log
from hvmesh.core.api import paging, quota_checks
from hvmesh.core.api.context import ApiContext
from hvmesh.core.api.list_indexes import SHARED
from hvmesh.core.api.lookups import by_id_or_name, check_ref, owned, resolve
from hvmesh.core.api.paging import Page
from hvmesh.core.api.requests import Ref
from hvmesh.core.bus.micro import Caller
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import Request, new_id
from hvmesh.core.protocol.records import Keypair, Network, Port, Vif
from hvmesh.core.protocol.requests import KeypairCreate, NetworkCreate, PortCreate
from hvmesh.core.state import ipam, names, ports
from hvmesh.core.state.store import CasConflict

LOG = log.get_logger(__name__)


class KeypairRef(Request):
    name: Annotated[str, Meta(min_length=1, max_length=255)]


class PortRef(Request):
    id: Annotated[str, Meta(min_length=1, max_length=255)]


class NetworkEndpoints:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    # --- networks -------------------------------------------------------------------------

    @staticmethod
    def visible(n: Network, caller: Caller) -> bool:
        return caller.is_admin or n.shared or n.project == caller.project

    async def find_network(self, ref: str, caller: Caller) -> Network:
        return await by_id_or_name(
            self.api.st.networks, ref, "network", lambda n: self.visible(n, caller)
        )

    async def network_create(self, caller: Caller, req: NetworkCreate) -> dict:
        planned = ipam.plan(req)
        network = Network(
            id=req.id or new_id(),
            name=req.name,
            project=caller.project,
            dns_nameservers=list(req.dns_nameservers),
            physical_network=req.physical_network,
            network_type=req.network_type,
            segmentation_id=req.segmentation_id,
            mtu=req.mtu,
            shared=req.shared,
            cidr=planned.cidr,
            gateway=planned.gateway,
            allocation_start=planned.allocation_start,
            allocation_end=planned.allocation_end,
        )
        st = self.api.st

        async def legacy() -> bool:
            return any(n.name == req.name for n in await st.networks.values())

        await names.create(st, st.networks, "network", network, legacy=legacy)
        LOG.info("api.network_created", network=network.id, cidr=network.cidr)
        return {"network": network_view(network)}

    async def network_list(self, caller: Caller, req: Page) -> dict:
        """Networks by name (then id), paged by network id."""
        scopes = None if caller.is_admin else (caller.project, SHARED)
        networks = self.api.lists.networks
        return await paging.from_index(
            self.api, "networks", networks, req, scopes, lambda n: n.id, network_view
        )

    async def network_get(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "network")
        return {"network": network_view(await self.find_network(req.id or req.name or "", caller))}

    async def network_delete(self, caller: Caller, req: Ref) -> dict:
        check_ref(req, "network")
        network = await self.find_network(req.id or req.name or "", caller)
        entry = await self.api.st.networks.must_get(network.id, "network")
        if entry.value.ips:
            raise errors.Conflict(
                f"network {network.name} has {len(entry.value.ips)} port(s): delete them first"
            )
        try:
            await self.api.st.networks.delete(network.id, revision=entry.revision)
        except CasConflict:
            raise errors.Conflict(f"network {network.name} changed meanwhile; try again") from None
        await names.give_up(self.api.st, "network", network.name, network.id)
        return {"deleted": network.id}

    # --- ports ----------------------------------------------------------------------------

    async def own_port(self, port_id: str, caller: Caller) -> Port:
        return await owned(self.api.st.ports, port_id, "port", caller)

    async def port_create(self, caller: Caller, req: PortCreate) -> dict:
        network = await resolve(self.find_network(req.network, caller), "network")
        port = await ports.create(
            self.api.st, network, caller.project, name=req.name, fixed_ip=req.fixed_ip, mac=req.mac
        )
        return {"port": port}

    async def port_list(self, caller: Caller, req: Page) -> dict:
        """Ports by network then address (then id), paged by port id."""
        scopes = None if caller.is_admin else (caller.project,)
        ports = self.api.lists.ports
        return await paging.from_index(self.api, "ports", ports, req, scopes, lambda p: p.id)

    async def port_get(self, caller: Caller, req: PortRef) -> dict:
        return {"port": await self.own_port(req.id, caller)}

    async def port_delete(self, caller: Caller, req: PortRef) -> dict:
        port = await self.own_port(req.id, caller)
        if port.server_id is not None:
            raise errors.Conflict(
                f"port {port.id} is attached to server {port.server_id}: detach it first"
            )
        await ports.remove(self.api.st, port)
        return {"deleted": port.id}

    # --- a new server's interfaces ----------------------------------------------------------

    async def interfaces(
        self, caller: Caller, server_id: str, networks: list[str], port_ids: list[str]
    ) -> list[Vif]:
        """Ports for a new server: one made on each network, then the given ports bound.

        All or nothing: on any error the ports made are removed and the bound ones freed.
        """
        resolved = [
            await resolve(self.find_network(ref, caller), f"networks[{i}]")
            for i, ref in enumerate(networks)
        ]
        wanted = [await self._free_port(ref, caller, i) for i, ref in enumerate(port_ids)]
        done: list[Port] = []
        try:
            vifs: list[Vif] = []
            for network in resolved:
                port = await ports.create(
                    self.api.st, network, caller.project, server_id=server_id, auto_delete=True
                )
                done.append(port)
                vifs.append(ports.vif(port, network))
            for port in wanted:
                bound = await ports.bind(self.api.st, port.id, server_id)
                done.append(bound)
                network = (await self.api.st.networks.must_get(bound.network_id, "network")).value
                vifs.append(ports.vif(bound, network))
            return vifs
        except BaseException:
            for port in done:
                await ports.let_go(self.api.st, server_id, port.id)
            raise

    async def _free_port(self, ref: str, caller: Caller, i: int) -> Port:
        try:
            port = await self.own_port(ref, caller)
        except errors.NotFound as exc:
            raise errors.BadRequest(f"ports[{i}]: {exc.message}") from None
        if port.server_id is not None:
            raise errors.Conflict(f"port {port.id} is in use by server {port.server_id}")
        return port

    # --- keypairs -------------------------------------------------------------------------

    async def _keypairs(self, caller: Caller) -> list[Keypair]:
        return [
            k
            for k in await self.api.st.keypairs.values()
            if k.user == caller.user and k.project == caller.project
        ]

    async def find_keypair(self, name: str, caller: Caller) -> Keypair:
        for k in await self._keypairs(caller):
            if k.name == name:
                return k
        raise errors.NotFound(f"keypair {name} not found")

    async def keypair_create(self, caller: Caller, req: KeypairCreate) -> dict:
        fingerprint = fingerprint_of(req.public_key)
        keypair = Keypair(
            id=new_id(),
            name=req.name,
            project=caller.project,
            user=caller.user,
            public_key=req.public_key.strip(),
            fingerprint=fingerprint,
        )
        st, scope = self.api.st, (caller.project, caller.user)  # unique per user, as Nova's

        async def legacy() -> bool:
            return any(k.name == req.name for k in await self._keypairs(caller))

        await quota_checks.reserve_holder(self.api, caller, "keypair", keypair.id)
        try:
            await names.create(st, st.keypairs, "keypair", keypair, scope, legacy)
        except BaseException:
            await quota_checks.release_holder(self.api, caller.project, "keypair", keypair.id)
            raise
        return {"keypair": keypair}

    async def keypair_list(self, caller: Caller, req: Page) -> dict:
        """The caller's keypairs by name, paged by name (as Nova's keypairs marker)."""
        scopes = ((caller.project, caller.user),)
        keypairs = self.api.lists.keypairs
        return await paging.from_index(
            self.api, "keypairs", keypairs, req, scopes, lambda k: k.name
        )

    async def keypair_get(self, caller: Caller, req: KeypairRef) -> dict:
        return {"keypair": await self.find_keypair(req.name, caller)}

    async def keypair_delete(self, caller: Caller, req: KeypairRef) -> dict:
        keypair = await self.find_keypair(req.name, caller)
        await self.api.st.keypairs.delete(keypair.id)
        scope = (keypair.project, keypair.user)
        await names.give_up(self.api.st, "keypair", keypair.name, keypair.id, scope)
        await quota_checks.release_holder(self.api, keypair.project, "keypair", keypair.id)
        return {"deleted": keypair.name}


SSH_KEY_TYPES = (
    "ssh-rsa",
    "ssh-ed25519",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def fingerprint_of(public_key: str) -> str:
    """The key's MD5 fingerprint (aa:bb:...), as Nova shows; BadRequest if it is no SSH key."""
    parts = public_key.strip().split()
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise errors.BadRequest(
            "public_key: not an OpenSSH public key (expected 'TYPE BASE64 [comment]' with "
            f"TYPE one of {', '.join(SSH_KEY_TYPES[:3])}, ...)"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise errors.BadRequest("public_key: the key data is not valid base64") from None
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4 : 4 + length].decode(errors="replace") != parts[0]:
        raise errors.BadRequest(f"public_key: the key data is not a {parts[0]} key")
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def network_view(n: Network) -> dict:
    """A network as the API shows it: its allocations counted, not listed."""
    return {
        "id": n.id,
        "name": n.name,
        "project": n.project,
        "cidr": n.cidr,
        "gateway": n.gateway,
        "dns_nameservers": n.dns_nameservers,
        "allocation_start": n.allocation_start,
        "allocation_end": n.allocation_end,
        "physical_network": n.physical_network,
        "network_type": n.network_type,
        "segmentation_id": n.segmentation_id,
        "mtu": n.mtu,
        "shared": n.shared,
        "ports": len(n.ips),
        "created_at": n.created_at,
    }
