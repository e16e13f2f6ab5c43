"""The chaos run's end: wait for every server to settle, then check that nothing was lost,
stuck or leaked, audit, and delete everything to prove each allocation, address and port
comes back."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvmesh.core.config import Config
from hvmesh.core.ops import audit
from hvmesh.core.ops.chaos_load import MULTI_MIN, Ledger, call
from hvmesh.core.protocol import errors
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.records import Server
from hvmesh.core.state.store import Store

SETTLED = (S.ACTIVE, S.STOPPED, S.ERROR)
MAX_FINDINGS = 50  # per check: enough to see a pattern, not a flood
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def busy(s: Server) -> bool:
    """Still moving: a task runs, a build is pending, or a resize waits for its confirm."""
    return s.task_state is not None or s.vm_state not in SETTLED


async def settle(store: Store, limit: float, tick: Callable[[int], None]) -> float:
    """Poll the servers bucket until no server is busy or `limit` seconds have passed;
    returns the seconds waited. `tick` sees how many are busy, once a second."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        left = sum(busy(s) for s in await store.servers.values())
        tick(left)
        if left == 0 or loop.time() - started > limit:
            return round(loop.time() - started, 1)
        # Many servers and no watch that says "all done": polled, within the limit.
        await asyncio.sleep(1.0)


def evidence(logs: Path, server_id: str, lines: int = 3) -> str:
    """The last log lines naming `server_id`, across every process's log."""
    found: list[str] = []
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if server_id in line:
                found.append(f"{path.stem}: {line[:300]}")
    return " || ".join(found[-lines:])


class Checks:
    """Findings by check, each a line naming the server or record and what is wrong."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.found: dict[str, list[str]] = {}

    def add(self, check: str, text: str, server_id: str = "") -> None:
        bucket = self.found.setdefault(check, [])
        if len(bucket) < MAX_FINDINGS:
            if server_id:
                text = f"{text}; log: {evidence(self.logs, server_id)}"
            bucket.append(text)
        elif len(bucket) == MAX_FINDINGS:
            bucket.append("... more")

    def lines(self) -> list[str]:
        return [f"{check}: {text}" for check, texts in self.found.items() for text in texts]


def describe(s: Server) -> str:
    fault = f", fault {s.fault.message!r}" if s.fault else ""
    return f"server {s.id} ({s.name}) {s.vm_state}/{s.task_state} on {s.host}{fault}"


def discarded(sid: str, servers: dict[str, Server], ledger: Ledger) -> bool:
    """Whether a missing server is a multi-create's above its min_count that found no
    room (the conductor removes those): the rest of its request, at least min_count of
    them, is there (or was deleted as asked)."""
    members = ledger.together.get(sid)
    if not members:
        return False
    kept = [m for m in members if m in servers or m in ledger.deleted]
    return len(kept) >= MULTI_MIN


async def check_servers(
    store: Store, ledger: Ledger, checks: Checks
) -> tuple[dict[str, int], dict[str, int]]:
    """Acknowledged creates exist (unless a delete took them: an acknowledged one, or
    one that got no answer, which may or may not take effect) and every server rests,
    in ERROR with a fault; returns the outcomes by status and the faults."""
    servers = {s.id: s for s in await store.servers.values()}
    outcomes: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for sid, kind in ledger.created.items():
        s = servers.get(sid)
        if s is None:
            # Deleted as asked: acknowledged, or a delete that got no answer took effect.
            if sid in ledger.deleted or sid in ledger.maybe_deleted:
                outcomes["deleted"] += 1
            elif discarded(sid, servers, ledger):
                outcomes["discarded"] += 1
            else:
                outcomes["lost"] += 1
                checks.add("lost", f"{kind} of {sid} acknowledged, no such server", sid)
        elif sid in ledger.deleted and not busy(s) and not (s.vm_state == S.ERROR and s.fault):
            checks.add("undeleted", f"delete acknowledged, still {describe(s)}", sid)
    for s in servers.values():
        outcomes[S.status(s.vm_state, s.task_state)] += 1
        if busy(s):
            checks.add("stuck", f"{describe(s)}, unchanged for {now() - s.updated_at:.0f}s", s.id)
        elif s.vm_state == S.ERROR:
            if s.fault is None or not s.fault.message:
                checks.add("no-fault", describe(s), s.id)
            else:
                faults[UUID.sub("<id>", s.fault.message)[:100]] += 1
    for entry in await store.server_actions.values():
        if entry.finish_time is None and entry.server_id in servers:
            checks.add(
                "open-action",
                f"{entry.action} {entry.request_id} of {describe(servers[entry.server_id])} "
                "never finished",
                entry.server_id,
            )
    return dict(outcomes), dict(faults.most_common(10))


async def check_state(store: Store, checks: Checks) -> None:
    """Every allocation, build in progress, address and port belongs to something alive."""
    servers = {s.id: s for s in await store.servers.values()}
    consumers = set(servers) | {s.migration.id for s in servers.values() if s.migration}
    for host in await store.hosts.values():
        for sid in host.allocations:
            if sid not in consumers:
                checks.add("allocation", f"{host.name} allocates for {sid}, which is gone", sid)
        for sid in host.in_progress:
            if sid not in servers or servers[sid].vm_state != S.BUILDING:
                checks.add("allocation", f"{host.name} counts a build of {sid}, not building")
    ports = {p.id: p for p in await store.ports.values()}
    for net in await store.networks.values():
        for ip, port_id in net.ips.items():
            if port_id not in ports:
                checks.add("address", f"{net.name} {ip} held by port {port_id}, which is gone")
    for p in ports.values():
        if p.server_id is not None and p.server_id not in servers:
            checks.add("port", f"port {p.id} ({p.ip}) bound to {p.server_id}, which is gone")
        elif p.server_id is None and p.auto_delete:
            checks.add("port", f"port {p.id} ({p.ip}) made for a server and bound to none")
    for s in servers.values():
        for vif in s.network_info:
            if vif.port_id not in ports:
                checks.add("port", f"{describe(s)}: interface port {vif.port_id} is gone")


async def check_audit(store: Store, nc: Any, cfg: Config, checks: Checks) -> list[str]:
    """Every kind the audit knows, the hypervisors' included (asked over `nc`)."""
    found = [
        f"{f.kind} {f.host} {f.server_id}: {f.message}"
        for f in await audit.audit(store, nc=nc, cfg=cfg)
    ]
    for text in found:
        checks.add("audit", text)
    return found


async def drain(
    store: Store, nc: Any, limit: float, checks: Checks, tick: Callable[[int], None]
) -> float:
    """Delete every server and wait until they are gone; then nothing may be left
    allocated, in progress, addressed or ported."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    asked: set[str] = set()
    while True:
        left = await store.servers.values()
        tick(len(left))
        if not left or loop.time() - started > limit:
            break
        for s in left:
            if s.id in asked and s.task_state == S.DELETING:
                continue
            try:
                await call(nc, "servers", "delete", {"id": s.id})
                asked.add(s.id)
            except errors.HvmeshError:
                continue  # asked again on the next round
        # Polled: the deletes finish on their own time, within the limit.
        await asyncio.sleep(1.0)
    for s in await store.servers.values():
        checks.add("drain", f"not deleted: {describe(s)}", s.id)
    for host in await store.hosts.values():
        if host.allocations or host.in_progress:
            checks.add(
                "drain",
                f"{host.name} still allocates {sorted(host.allocations)} "
                f"(building: {host.in_progress})",
            )
    for net in await store.networks.values():
        if net.ips:
            checks.add("drain", f"{net.name} still hands out {sorted(net.ips)[:10]}")
    for p in await store.ports.values():
        checks.add("drain", f"port {p.id} ({p.ip}) left, bound to {p.server_id}")
    return round(loop.time() - started, 1)


def replicas_behind(infos: list[Any], copies: int) -> list[str]:
    """Streams that do not have `copies` current copies: no leader, a peer offline or
    behind, or fewer replicas than asked for."""
    behind: list[str] = []
    for info in infos:
        name = info.config.name
        cluster = info.cluster
        peers = (cluster.replicas or []) if cluster is not None else []
        if info.config.num_replicas != copies:
            behind.append(f"{name}: {info.config.num_replicas} replicas, not {copies}")
        elif cluster is None or not cluster.leader:
            behind.append(f"{name}: no leader")
        elif len(peers) != copies - 1:
            behind.append(f"{name}: {len(peers) + 1} of {copies} copies")
        else:
            late = [p.name for p in peers if not p.current or p.offline or p.lag]
            if late:
                behind.append(f"{name}: {', '.join(late)} behind")
    return behind


async def caught_up(js: Any, copies: int, limit: float, checks: Checks) -> float:
    """Wait until every stream has `copies` current copies (a killed node rejoined and
    caught up); a finding for each that has not within `limit` seconds. Returns the wait."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        behind = replicas_behind(await js.streams_info(), copies)
        if not behind:
            return round(loop.time() - started, 1)
        if loop.time() - started > limit:
            for line in behind:
                checks.add("replica", line)
            return round(loop.time() - started, 1)
        # Catching up raises no event a client can wait on: polled, within the limit.
        await asyncio.sleep(0.5)
