"""The audit's host part: do the host records' allocations agree with the servers?

Findings, as Nova's `nova-manage placement audit` and `heal_allocations` would see them:

    overcommit  a host holds more of a resource class than its capacity (reported only)
    double      one server holds allocations on two hosts
    leaked      an allocation for a server that no longer exists
    mismatch    an allocation that differs from its server's flavor
    missing     an active server with no allocation on its host
    stale       a host counting a build in progress for a server not being built

A server being moved (or resized and not yet confirmed) also holds, on its source host,
an allocation under its migration's id with its old flavor (Nova's migration consumer):
that is expected, and once the server rests in VERIFY_RESIZE, missing if absent.

With heal, each finding but overcommit is fixed by a compare-and-set on the host record.
Servers in the middle of being scheduled are left alone: their claim may not be on
their record yet.
"""

from __future__ import annotations

import functools

import msgspec

from hvmesh.core.ops.audit_finding import Finding, Repair
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Host, Server
from hvmesh.core.state.store import Store


def host_findings(hosts: list[Host]) -> list[Finding]:
    """What can be seen from the host records alone: overcommit and double claims."""
    found: list[Finding] = []
    owners: dict[str, str] = {}
    for host in hosts:
        for rc, inv in host.inventories.items():
            if host.used(rc) > inv.capacity():
                found.append(
                    Finding(
                        kind="overcommit",
                        host=host.name,
                        message=f"{rc} {host.used(rc)} used > capacity {inv.capacity()}",
                    )
                )
        for sid in host.allocations:
            if sid in owners:
                found.append(
                    Finding(
                        kind="double",
                        host=host.name,
                        server_id=sid,
                        message=f"also allocated on {owners[sid]}",
                    )
                )
            owners.setdefault(sid, host.name)
    return found


def migration_consumers(servers: dict[str, Server]) -> dict[str, tuple[Server, str]]:
    """Migration id -> (its server, the source host where it holds the old flavor)."""
    return {
        s.migration.id: (s, s.migration.source_host)
        for s in servers.values()
        if s.migration is not None
    }


def expected_resources(consumer: str, servers: dict[str, Server]) -> dict[str, int] | None:
    """What `consumer` (a server or a migration) should hold: its flavor's resources."""
    server = servers.get(consumer)
    if server is not None:
        return server.flavor.resources()
    held = migration_consumers(servers).get(consumer)
    if held is None:
        return None
    m = held[0].migration
    assert m is not None
    return (m.old_flavor or held[0].flavor).resources()


def findings(hosts: list[Host], servers: dict[str, Server]) -> list[Finding]:
    found = host_findings(hosts)
    moving = migration_consumers(servers)
    # A double claim is kept on the server's own host; the other copies are the finding.
    for f in found:
        if f.kind == "double":
            server = servers.get(f.server_id)
            if server is not None and server.host == f.host:
                f.host, f.message = (
                    f.message.removeprefix("also allocated on "),
                    f"also allocated on {f.host}",
                )
    allocated = {(h.name, sid) for h in hosts for sid in h.allocations}
    for host in hosts:
        for sid, resources in host.allocations.items():
            server = servers.get(sid)
            if server is None and sid in moving:
                owner, source = moving[sid]
                expected = expected_resources(sid, servers)
                if host.name != source:
                    found.append(
                        Finding(
                            kind="leaked",
                            host=host.name,
                            server_id=sid,
                            message=f"migration of {owner.id} allocated off its source {source}",
                        )
                    )
                elif resources != expected:
                    found.append(
                        Finding(
                            kind="mismatch",
                            host=host.name,
                            server_id=sid,
                            message=f"migration allocation {resources} differs from "
                            f"old flavor {expected}",
                        )
                    )
            elif server is None:
                found.append(
                    Finding(
                        kind="leaked",
                        host=host.name,
                        server_id=sid,
                        message="server does not exist",
                    )
                )
            elif resources != server.flavor.resources() and server.host == host.name:
                found.append(
                    Finding(
                        kind="mismatch",
                        host=host.name,
                        server_id=sid,
                        message=f"allocation {resources} differs from flavor {server.flavor.resources()}",
                    )
                )
    for host in hosts:
        for sid in host.in_progress:
            server = servers.get(sid)
            if server is None or server.vm_state != states.BUILDING:
                found.append(
                    Finding(
                        kind="stale",
                        host=host.name,
                        server_id=sid,
                        message="build in progress for a server not being built",
                    )
                )
    for sid, server in servers.items():
        settled = server.task_state is None  # a delete releases before it removes the record
        if (
            server.host
            and server.vm_state != states.BUILDING
            and settled
            and (server.host, sid) not in allocated
        ):
            found.append(
                Finding(
                    kind="missing",
                    host=server.host,
                    server_id=sid,
                    message=f"{server.vm_state} server without an allocation",
                )
            )
        m = server.migration
        if m is not None and settled and (m.source_host, m.id) not in allocated:
            found.append(
                Finding(
                    kind="missing",
                    host=m.source_host,
                    server_id=m.id,
                    message=f"{server.vm_state} server {sid} without its migration's "
                    "allocation on the source",
                )
            )
    return found


def _heal_one(record: Host, finding: Finding, servers: dict[str, Server]) -> Host | None:
    if finding.kind == "stale":
        if finding.server_id not in record.in_progress:
            return None
        return msgspec.structs.replace(
            record, in_progress=[s for s in record.in_progress if s != finding.server_id]
        )
    allocations = dict(record.allocations)
    if finding.kind in ("leaked", "double"):
        if finding.server_id not in allocations:
            return None
        del allocations[finding.server_id]
    elif finding.kind in ("mismatch", "missing"):
        expected = expected_resources(finding.server_id, servers)
        if expected is None:
            return None
        allocations[finding.server_id] = expected
    else:
        return None
    return msgspec.structs.replace(record, allocations=allocations)


def repairs(store: Store, hosts: list[Host], servers: dict[str, Server]) -> list[Repair]:
    """Every host finding, each with its fix (none for an overcommit)."""
    out: list[Repair] = []
    for f in findings(hosts, servers):
        fix = None
        if f.kind != "overcommit":
            fix = functools.partial(
                store.hosts.mutate, f.host, functools.partial(_heal_one, finding=f, servers=servers)
            )
        out.append((f, fix))
    return out
