"""The filter scheduler's per-shape cache decides exactly as computing from scratch does.

Two schedulers share one index: one keeps filter results and scores between decisions
(schedulers/score_cache.py), the other has its cache turned off. With the random
tie-break off, both must find the same passing hosts with bit-for-bit the same totals
after every kind of change the index can see: claims, releases, finished and failed
builds, hosts disabled, deleted, added and re-traited, servers moving between hosts,
aggregates, and hosts going down and coming back as the (fake) clock moves.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgspec
import numpy as np
import pytest

from hvmesh.core import config
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.protocol.records import (
    Aggregate,
    Flavor,
    GroupSpec,
    Heartbeat,
    Host,
    Inventory,
    SchedulerHints,
)
from hvmesh.core.state import host_columns, inventory
from hvmesh.core.state.inventory import Index
from hvmesh.core.state.store import Entry
from hvmesh.plugins import manager
from hvmesh.plugins.api import Filter, SchedulerContext
from hvmesh.schedulers import filter_scheduler, score_cache
from hvmesh.schedulers.filter_scheduler import FilterScheduler
from hvmesh.schedulers.score_cache import Extremes

T0 = 1_700_000_000.0
FILTERS = [
    *config.SchedulerSection().enabled_filters,
    "IoOpsFilter",
    "NumInstancesFilter",
    "AggregateInstanceExtraSpecsFilter",
    "AggregateMultiTenancyIsolation",
]


class Clock:
    """Stands in for the `time` module where the index and scheduler read the clock."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(inventory, "time", fake)
    monkeypatch.setattr(filter_scheduler, "time", fake)
    return fake


class Fleet:
    """An index fed directly, with the record changes the watches would deliver."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.index = Index(service_down_time=60)
        self.revision = 0

    def put(self, host: Host) -> None:
        self.revision += 1
        self.index.apply_host(
            Entry(key=host.name, value=host, revision=self.revision), host.name, self.revision
        )

    def beat(self, name: str) -> None:
        self.index.apply_heartbeat(Heartbeat(host=name, at=self.clock.now, agent_id="t"))

    def record(self, name: str) -> Host:
        return self.index.hosts[name].value

    def change(self, name: str, **fields: Any) -> None:
        self.put(msgspec.structs.replace(self.record(name), **fields))


def make_host(i: int, rng: random.Random) -> Host:
    vcpus = rng.choice([8, 16, 32])
    return Host(
        name=f"h{i:03d}",
        driver="fake",
        availability_zone=f"az{i % 3}",
        hypervisor_type=rng.choice(["fake", "kvm"]),
        traits=["HW_GPU"] if i % 5 == 0 else [],
        inventories={
            "VCPU": Inventory(total=vcpus, allocation_ratio=2.0),
            "MEMORY_MB": Inventory(total=rng.choice([16384, 32768, 65536]), reserved=512),
            "DISK_GB": Inventory(total=rng.choice([200, 500])),
        },
    )


def pair(index: Index, filters: list[str] = FILTERS) -> tuple[FilterScheduler, FilterScheduler]:
    """A caching scheduler and a from-scratch one over the same index, tie-break off."""
    cfg = config.Config()
    cfg = msgspec.structs.replace(
        cfg,
        scheduler=msgspec.structs.replace(
            cfg.scheduler,
            enabled_filters=filters,
            num_instances_weight_multiplier=-0.5,
            max_io_ops_per_host=3,
        ),
    )
    reg = manager.load()
    ctx = reg.context(cfg, index)
    cached, plain = FilterScheduler(ctx), FilterScheduler(ctx, cache_shapes=0)
    cached.tie_break = plain.tie_break = 0.0
    return cached, plain


def shapes() -> list[RequestSpec]:
    small = Flavor(id="s", name="s", vcpus=2, ram_mb=2048, disk_gb=20)
    gpu = Flavor(
        id="g",
        name="g",
        vcpus=4,
        ram_mb=8192,
        disk_gb=40,
        extra_specs={"trait:HW_GPU": "required", "aggregate_instance_extra_specs:ssd": "true"},
    )
    big = Flavor(id="b", name="b", vcpus=16, ram_mb=30000, disk_gb=100)
    group = GroupSpec(id="g1", policy="soft-anti-affinity", member_hosts=["h001", "h002", "h002"])
    anti = GroupSpec(id="g2", policy="anti-affinity", member_hosts=["h004"])
    return [
        RequestSpec(server_id="", project="p", flavor=small),
        RequestSpec(server_id="", project="p", flavor=small, availability_zone="az1"),
        RequestSpec(server_id="", project="p", flavor=gpu),
        RequestSpec(
            server_id="", project="tenant", flavor=big, image_properties={"hypervisor_type": "kvm"}
        ),
        RequestSpec(server_id="", project="p", flavor=small, group=group),
        RequestSpec(server_id="", project="p", flavor=small, group=anti),
        RequestSpec(
            server_id="",
            project="p",
            flavor=small,
            scheduler_hints=SchedulerHints(different_host=["moving"]),
        ),
    ]


def assert_same(cached: FilterScheduler, plain: FilterScheduler, spec: RequestSpec) -> None:
    rows_c, scores_c = cached.scored_rows(spec)
    rows_p, scores_p = plain.scored_rows(spec)
    assert np.array_equal(rows_c, rows_p)
    assert np.array_equal(scores_c, scores_p)  # bit for bit: no tolerance


async def test_cached_decisions_equal_uncached(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    for name in ("build", "refresh"):
        original = getattr(score_cache.Shape, name)

        def counted(self: Any, *args: Any, _f: Any = original, _n: str = name) -> Any:
            calls[_n] += 1
            return _f(self, *args)

        monkeypatch.setattr(score_cache.Shape, name, counted)

    rng = random.Random(7)
    fleet = Fleet(clock)
    for i in range(240):
        fleet.put(make_host(i, rng))
        fleet.beat(f"h{i:03d}")
    fleet.change("h010", allocations={"moving": {"VCPU": 1}})
    cached, plain = pair(fleet.index)
    specs = shapes()
    added = 240
    for step in range(400):
        base = specs[step % len(specs)]
        spec = msgspec.structs.replace(base, server_id=f"s{step}")
        assert_same(cached, plain, spec)
        # The decision itself: the chosen hosts' totals are the best ones.
        rows, scores = plain.scored_rows(spec)
        total_of = dict(zip(rows.tolist(), scores.tolist(), strict=True))
        chosen = await cached.select(spec)
        row = fleet.index.columns.row
        best = sorted(scores.tolist(), reverse=True)[: len(chosen)]
        assert sorted((total_of[row[n]] for n in chosen), reverse=True) == best
        if chosen:  # claim on the first, as the scheduler service would
            host = fleet.record(chosen[0])
            fleet.change(
                host.name,
                allocations={**host.allocations, spec.server_id: spec.flavor.resources()},
                in_progress=[*host.in_progress, spec.server_id],
            )
        # Changes to one host often; those that rebuild every shape (5, 8, 9) rarely.
        change = rng.choices(range(11), weights=[4, 4, 2, 2, 1, 0.3, 2, 2, 0.3, 0.3, 4])[0]
        name = f"h{rng.randrange(added):03d}"
        if name not in fleet.index.hosts:
            fleet.put(make_host(int(name[1:]), rng))
            continue
        host = fleet.record(name)
        if change == 0 and host.in_progress:  # a build finished
            fleet.change(name, in_progress=host.in_progress[1:])
        elif change == 1 and host.allocations:  # a server deleted
            gone = next(iter(host.allocations))
            fleet.change(name, allocations={k: v for k, v in host.allocations.items() if k != gone})
        elif change == 2:
            fleet.change(name, failed_builds=host.failed_builds + 1)
        elif change == 3:
            fleet.change(name, status="disabled" if host.status == "enabled" else "enabled")
        elif change == 4:
            fleet.index.apply_host(None, name, fleet.revision + 1)
            fleet.revision += 1
        elif change == 5:  # a new host: the index grows
            fleet.put(make_host(added, rng))
            fleet.beat(f"h{added:03d}")
            added += 1
        elif change == 6:
            fleet.change(name, traits=[] if host.traits else ["HW_GPU"])
        elif change == 7:  # a server moves: its new host's record arrives first
            holder = fleet.index.consumers.get("moving")
            fleet.change(name, allocations={**host.allocations, "moving": {"VCPU": 1}})
            if holder is not None and holder != name:
                old = fleet.record(holder)
                fleet.change(
                    holder, allocations={k: v for k, v in old.allocations.items() if k != "moving"}
                )
        elif change == 8:
            members = [f"h{rng.randrange(added):03d}" for _ in range(6)]
            metadata = (
                {"ssd": "true", "filter_tenant_id": "tenant"} if step % 2 else {"ssd": "true"}
            )
            if step % 3 == 0:
                metadata["availability_zone"] = "az1"
            fleet.index.apply_aggregate(
                "agg", Aggregate(id="agg", name="agg", metadata=metadata, hosts=members)
            )
        elif change == 9:  # time passes; most hosts beat, a few fall silent
            clock.now += 25
            for other in list(fleet.index.hosts):
                if rng.random() < 0.9:
                    fleet.beat(other)
        elif change == 10:
            fleet.beat(name)
    assert calls["refresh"] > 4 * calls["build"] > 0  # the cache did its job, not just rebuilds


async def test_down_by_the_clock_alone(clock: Clock) -> None:
    """No record changes: a host whose heartbeats stop leaves the cached answer in time."""
    rng = random.Random(1)
    fleet = Fleet(clock)
    for i in range(20):
        fleet.put(make_host(i, rng))
        fleet.beat(f"h{i:03d}")
    cached, plain = pair(fleet.index)
    spec = shapes()[0]
    for _ in range(3):
        assert_same(cached, plain, spec)
    assert cached.cache.shapes
    clock.now += 30
    for i in range(1, 20):
        fleet.beat(f"h{i:03d}")  # h000 is silent from now on
    clock.now += 31  # h000 is down: its last beat is 61 s old
    rows, _ = cached.scored_rows(spec)
    assert fleet.index.columns.row["h000"] not in rows.tolist()
    assert_same(cached, plain, spec)
    fleet.beat("h000")  # and back
    rows, _ = cached.scored_rows(spec)
    assert fleet.index.columns.row["h000"] in rows.tolist()
    assert_same(cached, plain, spec)


def test_heartbeats_of_up_hosts_are_not_journaled(clock: Clock) -> None:
    fleet = Fleet(clock)
    fleet.put(make_host(0, random.Random(0)))
    fleet.beat("h000")
    start = fleet.index.columns.journal_end
    clock.now += 10
    fleet.beat("h000")
    assert fleet.index.columns.journal_end == start
    clock.now += 100  # silent for longer than service_down_time: the next beat counts
    fleet.beat("h000")
    assert fleet.index.columns.changed_since(start).tolist() == [0]


async def test_a_forgotten_journal_means_a_rebuild(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_columns, "JOURNAL_LIMIT", 8)
    rng = random.Random(3)
    fleet = Fleet(clock)
    for i in range(40):
        fleet.put(make_host(i, rng))
        fleet.beat(f"h{i:03d}")
    cached, plain = pair(fleet.index)
    spec = shapes()[0]
    assert_same(cached, plain, spec)
    assert_same(cached, plain, spec)
    (shape,) = cached.cache.shapes.values()
    for i in range(12):  # more changes than the journal keeps, few enough not to rebuild
        fleet.change(f"h{i % 6:03d}", failed_builds=i)
    assert fleet.index.columns.changed_since(shape.position) is None
    assert_same(cached, plain, spec)


def test_only_row_local_plugins_are_cached(clock: Clock) -> None:
    fleet = Fleet(clock)
    fleet.put(make_host(0, random.Random(0)))
    odd = Filter(name="Odd", mask=lambda cols, spec: np.ones(len(cols["name"]), dtype=bool))
    picky = Filter(name="Picky", mask=odd.mask, applies=lambda spec: spec.project == "picky")
    cfg = config.Config()
    ctx = SchedulerContext(config=cfg, index=fleet.index, filters=[odd])
    spec = shapes()[0]
    cache = FilterScheduler(ctx).cache
    assert cache.shape_for(spec) is None and cache.shape_for(spec) is None
    ctx = SchedulerContext(config=cfg, index=fleet.index, filters=[picky])
    cache = FilterScheduler(ctx).cache
    assert cache.shape_for(spec) is None  # seen once
    assert cache.shape_for(spec) is not None  # seen twice, and Picky does not apply
    picky_spec = msgspec.structs.replace(spec, project="picky")
    assert cache.shape_for(picky_spec) is None and cache.shape_for(picky_spec) is None
    retry = msgspec.structs.replace(spec, ignore_hosts=["h000"])
    assert cache.shape_for(retry) is None and cache.shape_for(retry) is None
    move = msgspec.structs.replace(spec, requested_host="h000")
    assert cache.shape_for(move) is None and cache.shape_for(move) is None


def test_requests_share_a_shape_whatever_names_each_one(clock: Clock) -> None:
    """Server id, claim key and deadline differ in every request the conductor sends; none
    of them may keep the next request of the same kind from using the kept shape."""
    fleet = Fleet(clock)
    fleet.put(make_host(0, random.Random(0)))
    ctx = SchedulerContext(config=config.Config(), index=fleet.index, filters=[])
    cache = FilterScheduler(ctx).cache
    base = shapes()[0]

    def request(n: int) -> RequestSpec:
        return msgspec.structs.replace(
            base, server_id=f"s{n}", claim_key=f"s{n}.0", expires_at=T0 + 60 + n
        )

    assert cache.shape_for(request(1)) is None  # seen once
    kept = cache.shape_for(request(2))
    assert kept is not None
    assert cache.shape_for(request(3)) is kept
    assert len(cache.shapes) == 1


def test_extremes_follow_a_full_scan() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 6, 50)
    passing = rng.random(50) < 0.5
    extremes = Extremes()
    extremes.scan(values, passing)
    for _ in range(2000):
        rows = np.unique(rng.integers(0, 50, rng.integers(1, 4)))
        was, old = passing[rows].tolist(), values[rows].tolist()
        values[rows] = rng.integers(0, 6, len(rows))
        passing[rows] = rng.random(len(rows)) < 0.5
        removed = [v for v, p in zip(old, was, strict=True) if p]
        added = [v for v, p in zip(values[rows].tolist(), passing[rows].tolist(), strict=True) if p]
        extremes.update(removed, added, values, passing)
        chosen = values[passing]
        if len(chosen):
            assert (extremes.lo, extremes.hi) == (chosen.min(), chosen.max())
            assert extremes.n_lo == np.count_nonzero(chosen == chosen.min())
            assert extremes.n_hi == np.count_nonzero(chosen == chosen.max())
        else:
            assert extremes.lo is None


async def test_a_server_seen_on_its_new_host_first(clock: Clock) -> None:
    """different_host reads where a server is: the host it left changes answer too."""
    rng = random.Random(2)
    fleet = Fleet(clock)
    for i in range(20):
        fleet.put(make_host(i, rng))
        fleet.beat(f"h{i:03d}")
    fleet.change("h001", allocations={"moving": {"VCPU": 1}})
    cached, plain = pair(fleet.index)
    spec = shapes()[-1]  # different_host=["moving"]
    for _ in range(2):
        assert_same(cached, plain, spec)
    assert fleet.index.columns.row["h001"] not in cached.scored_rows(spec)[0].tolist()
    fleet.change("h002", allocations={"moving": {"VCPU": 1}})  # h001's record is not yet
    rows, _ = cached.scored_rows(spec)
    assert fleet.index.columns.row["h001"] in rows.tolist()
    assert fleet.index.columns.row["h002"] not in rows.tolist()
    assert_same(cached, plain, spec)


async def test_a_host_whose_record_comes_after_its_heartbeat(clock: Clock) -> None:
    """A late record brings an older heartbeat with it: the cache must expire by it."""
    rng = random.Random(4)
    fleet = Fleet(clock)
    fleet.beat("h019")  # up for 10 s more only
    clock.now += 50
    for i in range(19):
        fleet.put(make_host(i, rng))
        fleet.beat(f"h{i:03d}")
    cached, plain = pair(fleet.index)
    spec = shapes()[0]
    for _ in range(2):
        assert_same(cached, plain, spec)
    fleet.put(make_host(19, rng))
    assert fleet.index.columns.row["h019"] in cached.scored_rows(spec)[0].tolist()
    clock.now += 11
    assert fleet.index.columns.row["h019"] not in cached.scored_rows(spec)[0].tolist()
    assert_same(cached, plain, spec)
