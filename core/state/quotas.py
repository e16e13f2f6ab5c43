"""Quota usage on JetStream: each project's holdings in one record, counted by compare-and-set.

A project's usage record ("quota_usage" bucket) keeps what each holder counts, keyed by
holder ("server.<id>", "group.<id>", "keypair.<id>"). `reserve` adds or grows holders and
checks the limits in the same compare-and-set, so concurrent requests, from any number of
API processes, can never overshoot a limit together. Re-applying a holder's amounts or
releasing it twice changes nothing, so every place that counts or releases may retry.

Who counts what, as Nova's quotas:
- the API reserves a server's amounts on create (a multi-create: all of max_count, else
  as many as fit and at least min_count), the larger of two flavors on resize, the
  flavor again on unshelve; a server group on create, a key pair on create;
- the conductor settles a server to what its record holds when an action ends
  (`settle`: a confirmed resize keeps the new flavor, a reverted one the old, a
  shelve-offloaded server keeps only its instance), and releases it once its record is
  deleted. ERROR servers still count, as in Nova.

A holder whose record was never written (an API process that died between reserving and
writing) or whose release was lost (a conductor that died between deleting the record and
releasing) is pruned, once older than GRACE, the first time a reservation in its project
would be refused.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from hvmesh.core import log
from hvmesh.core.protocol import errors, states
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.quota_records import QuotaHolding, QuotaUsage, project_key
from hvmesh.core.protocol.records import Flavor, Server
from hvmesh.core.protocol.resources import custom_resources
from hvmesh.core.state import coalesce
from hvmesh.core.state.coalesce import Coalescer
from hvmesh.core.state.store import Bucket, CasConflict, Store

LOG = log.get_logger(__name__)

# Nova's quota names, in the order they are shown; resource classes follow by name.
RESOURCES = (
    "instances",
    "cores",
    "ram",
    "server_groups",
    "server_group_members",
    "key_pairs",
    "metadata_items",
)
GRACE = 300.0  # seconds a holder without its record counts as a create in progress

# A holder: its key, its amounts, its user.
Holder = tuple[str, dict[str, int], str]


def server_key(server_id: str) -> str:
    return f"server.{server_id}"


def flavor_amounts(flavor: Flavor) -> dict[str, int]:
    """What a server of `flavor` counts: one instance, its vCPUs, its RAM, its classes."""
    out = {"instances": 1, "cores": flavor.vcpus, "ram": flavor.ram_mb}
    try:
        custom = custom_resources(flavor.extra_specs)
    except ValueError:  # refused when the flavor was made; not counted if it got in
        custom = {}
    out.update({rc: n for rc, n in custom.items() if n > 0})
    return out


def server_amounts(s: Server) -> dict[str, int]:
    """What the server counts as its record stands.

    Shelve-offloaded (and not unshelving): only its instance, as Nova. During a resize:
    the larger of both flavors, resource by resource, until it is confirmed or reverted.
    """
    if s.vm_state == states.SHELVED_OFFLOADED and s.task_state != states.UNSHELVING:
        return {"instances": 1}
    out = flavor_amounts(s.flavor)
    m = s.migration
    if m is not None and m.kind == "resize":
        for f in (m.old_flavor, m.new_flavor):
            if f is not None:
                for rc, n in flavor_amounts(f).items():
                    out[rc] = max(out.get(rc, 0), n)
    return out


def totals(holdings: dict[str, QuotaHolding], user: str | None = None) -> dict[str, int]:
    """The sum of every holder's amounts; key pairs only `user`'s (they count per user)."""
    out: dict[str, int] = {}
    for h in holdings.values():
        for rc, n in h.amounts.items():
            if rc == "key_pairs" and user is not None and h.user != user:
                continue
            out[rc] = out.get(rc, 0) + n
    return out


def exceeded(rc: str, requested: int, used: int, limit: int) -> errors.Forbidden:
    """Nova's message: Quota exceeded for cores: Requested 4, but already used 18 of 20 cores."""
    return errors.Forbidden(
        f"Quota exceeded for {rc}: Requested {requested}, but already used {used} of {limit} {rc}"
    )


def _first_over(
    limits: dict[str, int], before: dict[str, int], after: dict[str, int]
) -> errors.Forbidden | None:
    """The first limit `after` passes where it grew from `before`; None when all fit."""
    names = [*RESOURCES, *sorted(rc for rc in after if rc not in RESOURCES)]
    for rc in names:
        limit = limits.get(rc, -1)
        old, new = before.get(rc, 0), after.get(rc, 0)
        if limit >= 0 and new > old and new > limit:
            return exceeded(rc, new - old, old, limit)
    return None


async def usage(store: Store, project: str) -> QuotaUsage:
    entry = await store.quota_usage.get(project_key(project))
    return entry.value if entry is not None else QuotaUsage(project=project)


def writer(store: Store) -> Coalescer[QuotaUsage]:
    """The usage records' writes from this process, batched per project (a project's
    record is as hot as its busiest moment: every create, resize and delete in it)."""
    return coalesce.for_bucket(store.quota_usage)


async def _mutate(
    store: Store, project: str, change: Callable[[QuotaUsage], QuotaUsage | None]
) -> None:
    """`change` the project's usage record by compare-and-set, making it when missing."""
    await writer(store).mutate(
        project_key(project), change, make=lambda: QuotaUsage(project=project)
    )


async def reserve(
    store: Store,
    project: str,
    limits: dict[str, int],
    holders: Sequence[Holder],
    min_count: int | None = None,
) -> int:
    """Count `holders` against the project's limits in one compare-and-set: all of them,
    or with `min_count` the most that fit (at least min_count, in order); how many.

    A holder already counted is replaced by its new amounts (a resize: only the growth
    is checked). 403 naming the first quota exceeded, and nothing changes.
    """
    try:
        return await _reserve_once(store, project, limits, holders, min_count)
    except errors.Forbidden:
        if not await prune(store, project):
            raise
    return await _reserve_once(store, project, limits, holders, min_count)


async def _reserve_once(
    store: Store,
    project: str,
    limits: dict[str, int],
    holders: Sequence[Holder],
    min_count: int | None,
) -> int:
    fewest = len(holders) if min_count is None else min(min_count, len(holders))
    user = holders[0][2] if holders else None
    admitted: list[int] = []

    def change(u: QuotaUsage) -> QuotaUsage | None:
        admitted.clear()
        keys = {h[0] for h in holders}
        others = {k: v for k, v in u.holdings.items() if k not in keys}
        before = totals(u.holdings, user)
        base = totals(others, user)
        # Totals with the first n holders, n = 0..len(holders).
        running = [base]
        for _, amounts, holder_user in holders:
            step = dict(running[-1])
            for rc, n in amounts.items():
                if rc != "key_pairs" or holder_user == user:
                    step[rc] = step.get(rc, 0) + n
            running.append(step)
        for n in range(len(holders), fewest - 1, -1):
            if _first_over(limits, before, running[n]) is None:
                break
        else:
            refusal = _first_over(limits, before, running[fewest])
            assert refusal is not None
            raise refusal
        admitted.append(n)
        holdings = dict(u.holdings)
        changed = False
        for key, amounts, holder_user in holders[:n]:
            held = holdings.get(key)
            if held is None or held.amounts != amounts:
                holdings[key] = QuotaHolding(amounts=amounts, user=holder_user)
                changed = True
        return msgspec.structs.replace(u, holdings=holdings) if changed else None

    await _mutate(store, project, change)
    LOG.debug("quotas.reserved", project=project, holders=admitted[0], asked=len(holders))
    return admitted[0]


async def release(store: Store, project: str, keys: Sequence[str]) -> None:
    """Stop counting the holders `keys` (those not counted are left alone)."""
    gone = set(keys)

    def drop(u: QuotaUsage) -> QuotaUsage | None:
        if not gone & u.holdings.keys():
            return None
        kept = {k: v for k, v in u.holdings.items() if k not in gone}
        return msgspec.structs.replace(u, holdings=kept)

    await _drop(store, project, drop)


async def _drop(
    store: Store, project: str, drop: Callable[[QuotaUsage], QuotaUsage | None]
) -> None:
    """Release by `drop`; a record left with no holders goes (as if never made)."""
    key = project_key(project)
    written = await writer(store).mutate(key, drop)
    if written is not None and not written.value.holdings:
        with contextlib.suppress(CasConflict):  # a holder came meanwhile: it stays
            await store.quota_usage.delete(key, revision=written.revision)


async def settle(store: Store, server: Server) -> None:
    """Count the server as its record now stands, if it is counted at all (a server
    released meanwhile is never counted again). Never refused: an action's end only
    keeps or lowers what was reserved when it was accepted."""
    key = server_key(server.id)
    amounts = server_amounts(server)

    def apply(u: QuotaUsage) -> QuotaUsage | None:
        held = u.holdings.get(key)
        if held is None or held.amounts == amounts:
            return None
        holdings = {**u.holdings, key: msgspec.structs.replace(held, amounts=amounts)}
        return msgspec.structs.replace(u, holdings=holdings)

    await writer(store).mutate(project_key(server.project), apply)


async def prune(store: Store, project: str) -> int:
    """Release holders older than GRACE whose record does not exist; how many."""
    current = await usage(store, project)
    stale: dict[str, float] = {}
    cutoff = now() - GRACE
    for key, held in current.holdings.items():
        kind, _, record_id = key.partition(".")
        bucket = _records(store, kind)
        if held.at < cutoff and bucket is not None and await bucket.get(record_id) is None:
            stale[key] = held.at
    if not stale:
        return 0

    def drop(u: QuotaUsage) -> QuotaUsage | None:
        kept = {k: v for k, v in u.holdings.items() if not (k in stale and v.at == stale[k])}
        return msgspec.structs.replace(u, holdings=kept) if len(kept) < len(u.holdings) else None

    await _drop(store, project, drop)
    LOG.warning("quotas.pruned", project=project, holders=sorted(stale))
    return len(stale)


def _records(store: Store, kind: str) -> Bucket[Any] | None:
    buckets: dict[str, Bucket[Any]] = {
        "server": store.servers,
        "group": store.server_groups,
        "keypair": store.keypairs,
    }
    return buckets.get(kind)


def ordered(values: dict[str, int]) -> dict[str, int]:
    """Nova's quota names first, in their order, then resource classes by name."""
    names = itertools.chain(RESOURCES, sorted(k for k in values if k not in RESOURCES))
    return {k: values[k] for k in names if k in values}


async def limits(store: Store, defaults: dict[str, int], project: str) -> dict[str, int]:
    """The project's limits: the configured defaults with its overrides."""
    out = dict(defaults)
    entry = await store.quotas.get(project_key(project))
    if entry is not None:
        out.update(entry.value.limits)
    return ordered(out)
