"""The filter scheduler: Nova's filter-and-weigh pipeline over the inventory index.

Filters run in the fastest form they offer: a vectorised mask over the index's numpy
columns, else an SQL predicate run in DuckDB, else a per-host check. Weighers score
the survivors, each normalised to 0..1 and multiplied, as Nova does. Only the best
few hosts are ordered (a partial sort), since the claim almost always lands on one of
the first; the scheduler service asks again, without the hosts it tried, if not.

Requests that repeat a recent shape (all but the server id) reuse what the last one
computed, redone only for the hosts that changed since: see score_cache.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import (
    ColumnName,
    Columns,
    Filter,
    HostPassesFunction,
    MaskFunction,
    RegisterScheduler,
    SchedulerContext,
    SqlFunction,
    Weigher,
)
from hvmesh.schedulers.faults import PluginRaised
from hvmesh.schedulers.score_cache import MAX_SHAPES, ShapeCache, top_cut

if TYPE_CHECKING:
    from hvmesh.core.config import Config
    from hvmesh.core.protocol.records import Aggregate

TOP = 16  # hosts ordered and handed to the claim step per round
# Added to every total weight: far below any real difference, it breaks ties at random.
# Equal hosts are the common case (a fleet of untouched identical hosts), and without it
# the partial sort degrades to its slow path and every scheduler races for the same host.
TIE_BREAK = 1e-9
# Tie-break values are cut from a block of random numbers at a random offset; drawing
# fresh ones per host per decision cost as much as all the weighers together.
JITTER_REUSE = 64  # decisions served from one block before it is drawn again


def parse_multipliers(items: list[str]) -> dict[str, float]:
    """`[scheduler] weight_multipliers` ("Name=value" each) as a dict; bad entries fail loud."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"[scheduler] weight_multipliers: {item!r} is not Name=number"
            ) from None
    return out


class Survivors(dict):
    """Candidate columns restricted to the rows that passed, computed on first use.

    Weighers get this: the same columns and helpers as filters, over the survivors only
    (`row_of` answers a position among them).
    """

    def __init__(self, cols: Columns, rows: np.ndarray) -> None:
        super().__init__()
        self._cols = cols
        self._rows = rows  # ascending row numbers of the full columns
        self.config: Config = cols.config

    def __missing__(self, key: ColumnName) -> np.ndarray:
        column = self._cols[key]
        # Every host passing is common (an unfiltered request): then no copy is needed.
        value = self[key] = column if len(self._rows) == len(column) else column[self._rows]
        return value

    def __len__(self) -> int:
        return len(self._rows)

    def zone_code(self, zone: str) -> int:
        return self._cols.zone_code(zone)

    def has_trait(self, trait: str) -> np.ndarray:
        mask = self._cols.has_trait(trait)
        return mask if len(self._rows) == len(mask) else mask[self._rows]

    def host_of(self, server_id: str) -> str | None:
        return self._cols.host_of(server_id)

    def free(self, resource_class: str) -> np.ndarray:
        column = self._cols.free(resource_class)
        return column if len(self._rows) == len(column) else column[self._rows]

    def in_aggregates(self, wanted: Callable[[Aggregate], bool]) -> np.ndarray:
        mask = self._cols.in_aggregates(wanted)
        return mask if len(self._rows) == len(mask) else mask[self._rows]

    def row_of(self, host: str) -> int | None:
        row = self._cols.row_of(host)
        if row is None:
            return None
        i = int(np.searchsorted(self._rows, row))
        return i if i < len(self._rows) and self._rows[i] == row else None


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, highest first (partial sorts, then k sorted)."""
    n = len(scores)
    best = top_cut(scores, k)[1] if k < n else np.arange(n)
    if k < len(best):
        best = best[np.argpartition(scores[best], len(best) - k)[len(best) - k :]]
    return best[np.argsort(-scores[best], kind="stable")]


class FilterScheduler:
    def __init__(self, ctx: SchedulerContext, cache_shapes: int = MAX_SHAPES) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.scheduler
        self.multipliers = parse_multipliers(self.cfg.weight_multipliers)
        self.rng = np.random.default_rng()
        self.tie_break = TIE_BREAK  # 0 turns the tie-break off (tests compare totals)
        self._block = np.empty(0)
        self._block_uses = 0
        # Each filter with the form it is run in.
        self.masks: list[tuple[Filter, MaskFunction]] = [
            (f, f.mask) for f in ctx.filters if f.mask is not None
        ]
        self.sqls: list[tuple[Filter, SqlFunction]] = [
            (f, f.sql) for f in ctx.filters if f.mask is None and f.sql is not None
        ]
        self.per_host: list[tuple[Filter, HostPassesFunction]] = [
            (f, f.host_passes)
            for f in ctx.filters
            if f.mask is None and f.sql is None and f.host_passes is not None
        ]
        # The configuration does not change while the scheduler runs.
        self.weighing = [(w, m) for w in ctx.weighers if (m := self._multiplier(w))]
        self.cache = ShapeCache(
            ctx.index,
            ctx.config,
            ctx.filters,
            self.weighing,
            self._jitter,
            Survivors,
            max_shapes=cache_shapes,
        )

    def _multiplier(self, weigher: Weigher) -> float:
        if weigher.name in self.multipliers:
            return self.multipliers[weigher.name]
        if weigher.multiplier_option and hasattr(self.cfg, weigher.multiplier_option):
            return float(getattr(self.cfg, weigher.multiplier_option))
        return weigher.multiplier

    def passing_rows(self, spec: RequestSpec) -> tuple[Columns, np.ndarray]:
        """The index's columns and the row numbers of hosts passing every filter.

        Each filter is called once per request (per host only in its host_passes form);
        whatever one raises comes out as PluginRaised naming it.
        """
        index = self.ctx.index
        cols = index.candidate_columns()
        cols.config = self.ctx.config
        keep = cols["present"].copy()
        if spec.requested_host is not None:  # a move's chosen target: that row alone
            row = index.columns.row.get(spec.requested_host)
            only = np.zeros_like(keep)
            if row is not None:
                only[row] = True
            keep &= only
        for name in spec.ignore_hosts:
            row = index.columns.row.get(name)
            if row is not None:
                keep[row] = False
        current: Filter | None = None
        try:
            for current, mask in self.masks:
                if current.applies is not None and not current.applies(spec):
                    continue
                m = mask(cols, spec)
                if m is not None:
                    keep &= m
            where: list[str] = []
            params: list[Any] = []
            querying: list[Filter] = []
            for current, sql in self.sqls:
                if current.applies is not None and not current.applies(spec):
                    continue
                pred = sql(spec)
                if pred is not None:
                    where.append(pred[0])
                    params.extend(pred[1])
                    querying.append(current)
            current = None
            if where and keep.any():
                try:
                    keep &= index.sql_mask(where, params)
                except Exception as exc:  # one of the predicates: name them all
                    names = [f.name for f in querying]
                    raise PluginRaised("filter", names, exc) from exc
            rows = np.flatnonzero(keep)
            per_host = []
            for current, passes in self.per_host:
                if current.applies is None or current.applies(spec):
                    per_host.append((current, passes))
            current = None
            if per_host and len(rows):
                entries = [index.hosts.get(str(cols["name"][r])) for r in rows]
                ok = [e is not None for e in entries]
                for f, passes in per_host:
                    current = f
                    ok = [
                        good and e is not None and bool(passes(e.value, spec))
                        for good, e in zip(ok, entries, strict=True)
                    ]
                rows = rows[np.asarray(ok, dtype=bool)]
        except PluginRaised:
            raise
        except Exception as exc:
            if current is None:
                raise
            raise PluginRaised("filter", current.name, exc) from exc
        return cols, rows

    def weigh(self, survivors: Survivors, spec: RequestSpec) -> np.ndarray:
        """Sum of multiplier x normalised score, with a tie-breaking jitter already added."""
        total = self._jitter(len(survivors))
        if len(total) == 0:
            return total
        scratch = np.empty_like(total)
        current: Weigher | None = None
        try:
            for current, mult in self.weighing:
                if current.applies is not None and not current.applies(spec):
                    continue
                values = np.asarray(current.weigh(survivors, spec))
                lo, hi = values.min(), values.max()
                if hi == lo:
                    continue  # normalised to all zeros: adds nothing
                # total += mult * (values - lo) / (hi - lo), in one scratch buffer
                np.subtract(values, lo, out=scratch, casting="unsafe")
                scratch *= mult / float(hi - lo)
                total += scratch
        except Exception as exc:
            assert current is not None  # nothing else in the loop raises
            raise PluginRaised("weigher", current.name, exc) from exc
        return total

    def _jitter(self, n: int) -> np.ndarray:
        """n tiny random values: a window, at a random offset, of a block redrawn now and then."""
        if not self.tie_break:
            return np.zeros(n)
        if len(self._block) < 2 * n or self._block_uses >= JITTER_REUSE:
            self._block = self.rng.random(max(2 * n, 65536)) * self.tie_break
            self._block_uses = 0
        self._block_uses += 1
        start = int(self.rng.integers(0, len(self._block) - n + 1))
        return self._block[start : start + n].copy()

    def scored_rows(self, spec: RequestSpec) -> tuple[np.ndarray, np.ndarray]:
        """The rows passing every filter and their weighed totals, the way select reaches them."""
        shape = self.cache.shape_for(spec)
        if shape is not None:
            shape.refresh(time.time())
            return shape.scored_rows()
        cols, rows = self.passing_rows(spec)
        return rows, self.weigh(Survivors(cols, rows), spec)

    async def select(self, spec: RequestSpec) -> list[str]:
        shape = self.cache.shape_for(spec)
        if shape is not None:
            shape.refresh(time.time())
            k = self._top_count(spec, shape.n_passing)
            best = shape.best(k) if k else np.zeros(0, dtype=np.int64)
        else:
            cols, rows = self.passing_rows(spec)
            k = self._top_count(spec, len(rows))
            best = rows[top_rows(self.weigh(Survivors(cols, rows), spec), k)] if k else rows
        names = [str(n) for n in self.ctx.index.columns.arrays["name"][best]]
        subset = min(self.cfg.host_subset_size, len(names))
        if subset > 1:
            head = names[:subset]
            random.shuffle(head)
            names[:subset] = head
        return names

    def _top_count(self, spec: RequestSpec, passing: int) -> int:
        return min(max(TOP, self.cfg.host_subset_size + spec.num_alternates), passing)


@hookimpl
def hvmesh_register_schedulers(register: RegisterScheduler) -> None:
    register("filter_scheduler", FilterScheduler)
