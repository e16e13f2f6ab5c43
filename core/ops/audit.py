"""The audit (`hvmesh manage audit`): does every record agree with the others and with the hypervisors?

Findings by kind, each documented in its part:

    overcommit, double, leaked, mismatch, missing, stale   host allocations (audit_hosts.py)
    address_leaked, port_orphaned, port_missing           addresses and ports (audit_network.py)
    stuck                                                 servers whose task stopped (audit_servers.py)
    orphan_guest, pin_orphaned, host_unreachable          what hypervisors run (audit_guests.py)

The hypervisor part needs a NATS connection to ask the agents; without one it is left
out. With heal, every finding but overcommit and host_unreachable is repaired, each by a
compare-and-set that leaves a record changed meanwhile alone (or, for a guest, by its
agent, which checks again under the server's lock); then the audit looks again, and a
finding not seen any more is marked healed.
"""

from __future__ import annotations

from nats.aio.client import Client

from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.ops import audit_guests, audit_hosts, audit_network, audit_servers
from hvmesh.core.ops.audit_finding import Finding, Repair
from hvmesh.core.ops.audit_hosts import findings, host_findings
from hvmesh.core.state.store import Store

__all__ = ["Finding", "audit", "findings", "host_findings"]

LOG = log.get_logger(__name__)


async def _repairs(store: Store, nc: Client | None, cfg: Config) -> list[Repair]:
    servers = {s.id: s for s in await store.servers.values()}
    found = audit_servers.repairs(store, servers, cfg)
    found += audit_hosts.repairs(store, await store.hosts.values(), servers)
    found += await audit_network.repairs(store, servers)
    if nc is not None:
        found += await audit_guests.repairs(nc, store, cfg)
    return found


async def audit(
    store: Store, heal: bool = False, nc: Client | None = None, cfg: Config | None = None
) -> list[Finding]:
    """Every finding; with `heal`, fix what can be fixed and mark it healed."""
    cfg = cfg or Config()
    repairs = await _repairs(store, nc, cfg)
    found = [f for f, _ in repairs]
    if not heal or not found:
        return found
    # Stuck servers first: ending a build changes what the host part expects.
    for f, fix in repairs:
        if fix is None:
            continue
        try:
            await fix()
        except Exception as exc:
            LOG.warning(
                "audit.heal_failed", kind=f.kind, host=f.host, server=f.server_id, error=str(exc)
            )
    # Look again: whatever is gone now was healed (an overcommit too, when healing a
    # leaked allocation emptied it).
    left = {f.key() for f, _ in await _repairs(store, nc, cfg)}
    for f in found:
        f.healed = f.key() not in left
    return found
