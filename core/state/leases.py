"""Placement leases: a scheduling request's claim lands on one host, however often it is answered.

The conductor names each request it sends with a claim key, the same on every retry (a
timeout, a conductor restart). The first claim made for that key is recorded in the
"placement_leases" bucket with a create, which only one writer can win; every later
answer to the key reads the lease instead of choosing again. So a request a hung
scheduler answers late, after the conductor asked again elsewhere, finds the host the
retry claimed and adds no second allocation; and once that claim has been given back
(a failed spawn, a group conflict), the lease says so: the request is superseded.

Two copies of one request answered at the same moment may each claim a host; the one
whose lease write loses gives its claim back and answers with the winner's host.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

import msgspec

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import PlacementLease
from hvmesh.core.state import placement
from hvmesh.core.state.store import CasConflict, Store

LOG = log.get_logger(__name__)

MAX_ROUNDS = 64  # pick-and-claim rounds before giving up on a request
KEY = re.compile(r"(?!\.)(?!.*\.\.)[-/_=.a-zA-Z0-9]+(?<!\.)")  # what a KV key may be

Pick = Callable[[list[str]], Awaitable[list[str]]]
"""`pick(tried)`: the hosts to try next, best first, none of `tried`; [] when none is left."""
Claim = Callable[[str], Awaitable[placement.ClaimResult]]
"""`claim(host)`: claim on `host` for the request (idempotent for one server)."""


class Placed(msgspec.Struct):
    """Where a request's claim is: `host` (None: nowhere, and `reason` says why)."""

    host: str | None
    alternates: list[str] = msgspec.field(default_factory=list)
    reason: str = ""
    superseded: bool = False  # the claim was made once and given back since
    tried: int = 0  # claims tried before this answer


async def place(
    store: Store,
    key: str,
    server_id: str,
    pick: Pick,
    claim: Claim,
    expires_at: float = 0.0,
    num_alternates: int = 0,
) -> Placed:
    """Claim a host for `server_id` under lease `key` ("" for none), or find the one claimed.

    With a lease already written, nothing is claimed: its host is the answer if it still
    holds the server's allocation, else the request is superseded. Otherwise the hosts
    `pick` offers are claimed in turn until one holds, unless `expires_at` (epoch
    seconds, 0 for never) has passed: the caller has stopped waiting, so nothing is.
    """
    if key and not KEY.fullmatch(key):
        raise errors.BadRequest(f"claim_key {key!r}: only A-Z a-z 0-9 - _ = / . may be used")
    if key:
        lease = await store.placement_leases.get(key)
        if lease is not None:
            return await _follow(store, lease.value, server_id)
    tried: list[str] = []
    reason = "no host passed the filters"
    for _ in range(MAX_ROUNDS):
        names = await pick(tried)
        if not names:
            break
        for i, name in enumerate(names):
            if expires_at and time.time() > expires_at:
                LOG.info("placement.request_expired", server=server_id, key=key)
                return Placed(host=None, reason="request expired: its caller stopped waiting")
            result = await claim(name)
            if not result.claimed:
                tried.append(name)
                reason = f"{name}: {result.reason}"
                continue
            alternates = names[i + 1 : i + 1 + num_alternates]
            placed = Placed(host=name, alternates=alternates, tried=len(tried) + 1)
            return await _record(store, key, server_id, placed) if key else placed
    return Placed(host=None, reason=reason, tried=len(tried))


async def _record(store: Store, key: str, server_id: str, placed: Placed) -> Placed:
    """Write the lease for the claim just made; if another answer's lease won, follow it."""
    assert placed.host is not None
    lease = PlacementLease(server_id=server_id, host=placed.host, alternates=placed.alternates)
    try:
        await store.placement_leases.create(key, lease)
        return placed
    except CasConflict:
        pass
    entry = await store.placement_leases.get(key)
    if entry is None:  # expired meanwhile (an hour later): nothing to follow
        return placed
    if entry.value.host != placed.host:
        # Another copy of this request claimed elsewhere first: ours goes back.
        await placement.release(store, placed.host, server_id)
        LOG.info(
            "placement.lease_followed",
            server=server_id,
            key=key,
            released=placed.host,
            host=entry.value.host,
        )
    return await _follow(store, entry.value, server_id)


async def _follow(store: Store, lease: PlacementLease, server_id: str) -> Placed:
    """The lease's host, if it still holds the server's allocation (else: superseded)."""
    entry = await store.hosts.get(lease.host)
    if entry is not None and server_id in entry.value.allocations:
        return Placed(host=lease.host, alternates=list(lease.alternates))
    LOG.info("placement.superseded", server=server_id, host=lease.host)
    return Placed(
        host=None,
        reason=f"request superseded: its claim on {lease.host} was given back",
        superseded=True,
    )


async def release_for_gone(store: Store, server_id: str) -> int:
    """Give back every claim a lease records for `server_id`, whose record is gone; on how
    many hosts one was looked for.

    A conductor that dies between a scheduler's claim and writing the host into the
    server record, while a delete removes the record (it had no host to release), leaves
    a claim only the lease knows of; the build's redelivered task finds the record gone
    and gives it back here.
    """
    hosts = {entry.value.host async for entry in store.placement_leases.entries(server_id)}
    for host in hosts:
        await placement.release(store, host, server_id)  # a no-op where it holds nothing
    if hosts:
        LOG.info("leases.released_for_gone", server=server_id, hosts=sorted(hosts))
    return len(hosts)


def build_key(server_id: str, attempt: int, round_: int) -> str:
    """A build's claim key: its attempt, and the round of group-conflict re-selections."""
    return f"{server_id}.b{attempt}.{round_}"


def move_key(server_id: str, migration_id: str) -> str:
    """A move's claim key: one per migration."""
    return f"{server_id}.{migration_id}.0"
