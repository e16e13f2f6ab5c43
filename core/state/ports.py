"""Ports and the interfaces they give servers: make, bind, unbind, remove.

Shared by the API (server create, interface attach, port endpoints) and the conductor
(a deleted server's ports). A port's address comes from core/state/ipam.py; binding a port to
a server is a compare-and-set of the port record, so one port never serves two servers.
"""

from __future__ import annotations

import msgspec

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.base import new_id
from hvmesh.core.protocol.records import Network, Port, Server, Vif
from hvmesh.core.state import ipam
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)
CONFIRM_ATTEMPTS = 3  # tries to make a port whose address was reclaimed meanwhile


def vif(port: Port, network: Network) -> Vif:
    """The interface a driver plugs for `port` on `network`."""
    return Vif(
        port_id=port.id,
        network_id=network.id,
        network_name=network.name,
        mac=port.mac,
        ip=port.ip,
        cidr=network.cidr,
        gateway=network.gateway,
        dns_nameservers=list(network.dns_nameservers),
        physical_network=network.physical_network,
        network_type=network.network_type,
        segmentation_id=network.segmentation_id,
        mtu=network.mtu,
    )


async def create(
    st: Store,
    network: Network,
    project: str,
    name: str = "",
    fixed_ip: str | None = None,
    mac: str | None = None,
    server_id: str | None = None,
    auto_delete: bool = False,
) -> Port:
    """A new port with an address from the network's IPAM (and a MAC).

    The address is taken (pending), the port written, the address confirmed: see
    core/state/ipam.py for what a crash between the steps leaves and who cleans it.
    """
    port_id = new_id()
    for _ in range(CONFIRM_ATTEMPTS):
        ip = await ipam.allocate(st.networks, network.id, port_id, fixed_ip, st.ports)
        port = Port(
            id=port_id,
            name=name,
            network_id=network.id,
            project=project,
            mac=(mac or ipam.new_mac()).lower(),
            ip=ip,
            server_id=server_id,
            auto_delete=auto_delete,
        )
        try:
            await st.ports.create(port.id, port)
            held = await ipam.confirm(st.networks, network.id, ip, port.id)
        except BaseException:
            await remove(st, port)
            raise
        if held:
            LOG.info("ports.created", port=port.id, network=network.id, ip=ip, server=server_id)
            return port
        # Stalled past the grace: the address went back to the network. Start again.
        await st.ports.delete(port.id)
        LOG.warning("ports.address_reclaimed", port=port.id, network=network.id, ip=ip)
    raise errors.ServiceUnavailable(
        f"network {network.name}: the address for a new port was reclaimed "
        f"{CONFIRM_ATTEMPTS} times while the port was written; try again"
    )


async def bind(st: Store, port_id: str, server_id: str) -> Port:
    """Bind a free port to a server; Conflict if another server has it."""

    def take(p: Port) -> Port | None:
        if p.server_id == server_id:
            return None
        if p.server_id is not None:
            raise errors.Conflict(f"port {p.id} is in use by server {p.server_id}")
        return msgspec.structs.replace(p, server_id=server_id)

    entry = await st.ports.mutate(port_id, take)
    if entry is None:
        raise errors.NotFound(f"port {port_id} not found")
    return entry.value


async def remove(st: Store, port: Port) -> None:
    """Delete a port record and give its address back."""
    await st.ports.delete(port.id)
    await ipam.release(st.networks, port.network_id, port.ip, port.id)
    LOG.info("ports.removed", port=port.id, ip=port.ip)


async def let_go(st: Store, server_id: str, port_id: str) -> None:
    """A server no longer uses the port: one made for it goes, a user's port is unbound."""
    entry = await st.ports.get(port_id)
    if entry is None or entry.value.server_id != server_id:
        return
    if entry.value.auto_delete:
        await remove(st, entry.value)
        return

    def unbind(p: Port) -> Port | None:
        if p.server_id != server_id:
            return None
        return msgspec.structs.replace(p, server_id=None, status="DOWN")

    await st.ports.mutate(port_id, unbind)


async def let_go_all(st: Store, server: Server) -> None:
    """Every port of a deleted server (Nova's deallocate_for_instance)."""
    for v in server.network_info:
        await let_go(st, server.id, v.port_id)


async def set_status(st: Store, server: Server, status: str) -> None:
    """Mark the server's ports ACTIVE (running) or DOWN."""
    for v in server.network_info:

        def mark(p: Port) -> Port | None:
            if p.server_id != server.id or p.status == status:
                return None
            return msgspec.structs.replace(p, status=status)

        await st.ports.mutate(v.port_id, mark)
