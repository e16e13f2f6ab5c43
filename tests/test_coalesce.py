"""Batched writes of one hot record (core/state/coalesce.py) and the store's read by key,
on a real nats-server: concurrent changes all land, each sees the others, a refused one
fails alone, and a writer in another connection still meets them by compare-and-set."""

from __future__ import annotations

import asyncio

import msgspec

from hvmesh.core.protocol import errors
from hvmesh.core.protocol.quota_records import QuotaHolding, QuotaUsage
from hvmesh.core.state.coalesce import Coalescer
from hvmesh.core.state.store import Store
from tests.support import Deployment


def holding(key: str) -> QuotaHolding:
    return QuotaHolding(amounts={"instances": 1}, user="u")


async def test_concurrent_changes_land_in_few_writes(deployment: Deployment) -> None:
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    store = await Store(nc.jetstream()).open()
    other = await Store((await deployment.service_connection()).jetstream()).open()
    bucket = store.quota_usage
    writes = Coalescer(bucket)
    limit = 150

    def add(key: str):  # type: ignore[no-untyped-def]
        def change(u: QuotaUsage) -> QuotaUsage:
            if len(u.holdings) >= limit:  # as a quota check: on what the batch made so far
                raise errors.Forbidden(f"{key}: over {limit}")
            return msgspec.structs.replace(u, holdings={**u.holdings, key: holding(key)})

        return change

    def make() -> QuotaUsage:
        return QuotaUsage(project="p")

    async def foreign(i: int) -> None:  # another process's writer, by compare-and-set
        await other.quota_usage.mutate("p", add(f"other-{i}"))

    await bucket.create("p", make())  # the foreign writer changes only what exists
    results = await asyncio.gather(
        *(writes.mutate("p", add(f"k{i}"), make) for i in range(200)),
        *(foreign(i) for i in range(10)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, errors.Forbidden)]
    failed = [r for r in results if isinstance(r, BaseException) and r not in refused]
    assert failed == []
    entry = await bucket.get("p")
    assert entry is not None
    # Never over the limit, every change either in the record or refused on its own.
    assert len(entry.value.holdings) == limit
    assert len(refused) == 210 - limit
    # Far fewer writes than changes: the record's revision counts every write made.
    info = await nc.jetstream().stream_info("KV_quota_usage")
    assert (info.state.last_seq or 0) < 200


async def test_a_batch_makes_the_record_when_any_change_asks(deployment: Deployment) -> None:
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    store = await Store(nc.jetstream()).open()
    writes = Coalescer(store.quota_usage)

    def drop(u: QuotaUsage) -> QuotaUsage | None:  # only alters what exists
        return None

    def add(u: QuotaUsage) -> QuotaUsage:
        return msgspec.structs.replace(u, holdings={**u.holdings, "k": holding("k")})

    # The first to arrive makes nothing on its own; the second, in the same batch, does.
    results = await asyncio.gather(
        writes.mutate("q", drop),
        writes.mutate("q", add, lambda: QuotaUsage(project="q")),
    )
    entry = await store.quota_usage.get("q")
    assert entry is not None and set(entry.value.holdings) == {"k"}
    assert results[1] is not None and results[1].revision == entry.revision


async def test_read_by_key(deployment: Deployment) -> None:
    nc = await deployment.service_connection()
    deployment.connections.append(nc)
    store = await Store(nc.jetstream()).open()
    bucket = store.quota_usage
    assert await bucket.get("missing") is None
    assert await bucket.get("no spaces") is None  # no such key can exist
    assert await bucket.get("a.>") is None
    revision = await bucket.create("p", QuotaUsage(project="p"))
    entry = await bucket.get("p")
    assert entry is not None and entry.revision == revision and entry.value.project == "p"
    await bucket.delete("p")
    assert await bucket.get("p") is None  # a delete marker is no record
