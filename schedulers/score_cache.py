"""Filter and weigher results kept between decisions, per request shape.

Most requests differ from the one before only in their server id: same flavor, zone,
hints, image and group. For such a shape the filter scheduler keeps, over every row of
the index, whether the host passes the filters, each weigher's raw score, the weighed
total, and a short list of the best rows. The next decision of that shape reads the
rows the index journaled as changed since (a claim, a host update, a host coming up)
and redoes the filters and weighers for those rows only, by calling them with the
columns of just those rows. Normalisation stays Nova's, min and max over the passing
hosts: the cache tracks both and how many hosts hold them, and when either moves it
re-totals every row (so totals equal those computed from scratch).

What is kept is only correct if each filter's answer for a host depends on that host's
row alone, so only filters and weighers that declare `row_local` are cached; a request
that any other filter or weigher applies to is decided from scratch. So is a request
with ignore_hosts (a retry round: rare, and its hosts count in normalisation) or a
requested_host (a move to a chosen host): the scheduler applies those itself. Three
things change answers without touching the rows a shape last saw, and each forces a
full rebuild of the shape: the index growing, an aggregate changing, and the clock
reaching the moment the earliest host counted as up would go stale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from itertools import compress
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import numpy as np

from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.state.inventory import Index
from hvmesh.plugins.api import Columns, Filter, MaskFunction, Weigher
from hvmesh.schedulers.faults import PluginRaised

if TYPE_CHECKING:
    from hvmesh.core.config import Config

# Rows kept as the best candidates of a shape; when fewer than a decision needs remain
# above the threshold they were cut at, they are picked again from every row. Among
# equal hosts, the tie-break picks at random from these.
CANDIDATES = 512
MAX_SHAPES = 8  # shapes kept; each holds a few arrays as long as the index
SEEN = 64  # shapes remembered as seen once: only a shape seen twice is kept
# Changed rows beyond this fraction of the index: rebuilding is as cheap as updating.
REBUILD_FRACTION = 4


class RowsView(Columns, Protocol):
    """Columns of some rows only, whose `up` the cache sets itself."""

    def __setitem__(self, column: str, value: np.ndarray, /) -> None: ...


ViewOf = Callable[[Columns, np.ndarray], RowsView]  # (full columns, rows) -> columns of those rows


def top_cut(
    values: np.ndarray, count: int, among: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """A threshold and the positions of the values at or above it: at least the `count`
    highest (1 <= count <= the values that count), and not many more.

    A partition costs about 10 ns a value, so the threshold is first guessed from a
    sample (the 32nd highest of every step-th value, so that about `aim` values are
    above it) and checked; a bad guess falls back to the partition. `among` (a mask)
    names the values that count, when the rest are -inf: the partition runs over those
    only, as numpy's slows down badly over many equal values.
    """
    n = len(values)
    aim = max(4 * count, 512)
    if n >= 8 * aim:
        sample = values[:: aim // 32]
        guess = np.partition(sample, len(sample) - 32)[len(sample) - 32]
        above = np.flatnonzero(values >= guess)
        if count <= len(above) <= 4 * aim:
            return float(guess), above
    chosen = values if among is None else values[among]
    cut = len(chosen) - count
    threshold = float(np.partition(chosen, cut)[cut])
    return threshold, np.flatnonzero(values >= threshold)


def shape_key(spec: RequestSpec) -> bytes:
    """Everything in a request that row-local plugins may read: all but what names this one
    request (its server, its claim, when its caller gives up)."""
    return msgspec.json.encode(
        msgspec.structs.replace(spec, server_id="", claim_key="", expires_at=0.0)
    )


def _snapshot(values: Any, n: int) -> np.ndarray:
    """A weigher's result as an array of its own (it may be a view of the index's column)."""
    array = np.asarray(values)
    return array.copy() if array.shape == (n,) else np.array(np.broadcast_to(array, (n,)))


def _masked(
    masks: list[tuple[Filter, MaskFunction]], cols: Columns, spec: RequestSpec, keep: np.ndarray
) -> np.ndarray:
    """`keep` narrowed by every mask, in place; a mask that raises comes out as PluginRaised."""
    current: Filter | None = None
    try:
        for f, mask in masks:
            current = f
            m = mask(cols, spec)
            if m is not None:
                keep &= m
    except Exception as exc:
        assert current is not None  # nothing else in the loop raises
        raise PluginRaised("filter", current.name, exc) from exc
    return keep


def _scores(weigher: Weigher, cols: Columns, spec: RequestSpec, n: int) -> np.ndarray:
    """The weigher's raw scores of the n rows of `cols`; what it raises comes out as PluginRaised."""
    try:
        return _snapshot(weigher.weigh(cols, spec), n)
    except Exception as exc:
        raise PluginRaised("weigher", weigher.name, exc) from exc


class Extremes:
    """Min and max of one weigher's raw scores over the passing rows, and how many hold each.

    The counts let most updates move min and max without a scan: only when every row
    holding an extreme changes away from it is a full scan needed. Updates come as
    Python lists: a decision changes a handful of rows, where numpy's per-call cost
    would dominate. Min and max are kept as Python numbers, which numpy combines with
    an array exactly as it does the array's own scalars.
    """

    __slots__ = ("hi", "lo", "n_hi", "n_lo")

    def __init__(self) -> None:
        self.lo: Any = None  # None: no passing rows
        self.hi: Any = None
        self.n_lo = 0
        self.n_hi = 0

    def scan(self, values: np.ndarray, passing: np.ndarray) -> None:
        chosen = values[passing]
        if len(chosen) == 0:
            self.lo = self.hi = None
            return
        lo, hi = chosen.min(), chosen.max()
        self.n_lo = int(np.count_nonzero(chosen == lo))
        self.n_hi = int(np.count_nonzero(chosen == hi))
        self.lo, self.hi = lo.item(), hi.item()

    def update(
        self, removed: list[Any], added: list[Any], values: np.ndarray, passing: np.ndarray
    ) -> bool:
        """Take out `removed` and put in `added` (scores of rows leaving and joining the
        passing set; `values` and `passing` are already updated). True if min or max moved."""
        old_lo, old_hi = self.lo, self.hi
        if old_lo is None:  # nothing passed before: what passes now is all in `added`
            if added:
                self.lo, self.hi = min(added), max(added)
                self.n_lo, self.n_hi = added.count(self.lo), added.count(self.hi)
            return bool(added)
        lo, hi = old_lo, old_hi
        n_lo = self.n_lo - removed.count(lo)
        n_hi = self.n_hi - removed.count(hi)
        if added:
            low, high = min(added), max(added)
            if low < lo:
                lo, n_lo = low, added.count(low)
            else:
                n_lo += added.count(lo)
            if high > hi:
                hi, n_hi = high, added.count(high)
            else:
                n_hi += added.count(hi)
        if n_lo <= 0 or n_hi <= 0:
            self.scan(values, passing)  # an extreme's last holder left: look again
        else:
            self.lo, self.hi, self.n_lo, self.n_hi = lo, hi, n_lo, n_hi
        if self.lo is None:
            return True
        return bool(self.lo != old_lo or self.hi != old_hi)


class Shape:
    """One request shape's filter results, raw scores, totals and best rows, kept current."""

    def __init__(
        self,
        index: Index,
        config: Config,
        spec: RequestSpec,
        masks: list[tuple[Filter, MaskFunction]],
        weighers: list[tuple[Weigher, float]],
        jitter: Callable[[int], np.ndarray],
        view_of: ViewOf,
    ) -> None:
        self.index = index
        self.config = config
        self.spec = spec  # the first request of the shape: all its kin read the same
        self.masks = masks  # the row-local filters that apply, with their masks
        self.weighers = weighers  # (weigher, multiplier), each applying and non-zero
        self._jitter = jitter
        self._view_of = view_of
        self.size = -1  # rows covered; -1 until the first build
        self.position = 0  # the index journal's position last caught up with
        self.aggregates_version = -1
        self.up_until = -np.inf  # when the earliest host counted up would go stale
        self.passing = np.zeros(0, dtype=bool)
        self.n_passing = 0
        self.raw: list[np.ndarray] = []
        self.extremes: list[Extremes] = []
        self.jitter = np.zeros(0)
        self.total = np.zeros(0)  # -inf where not passing
        self.candidates = np.zeros(0, dtype=np.int64)  # holds every row >= threshold
        self.is_candidate = np.zeros(0, dtype=bool)
        self.threshold = np.inf

    # --- keeping current -------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Bring the shape up to date with the index as of `now`.

        A plugin that raises leaves the shape half updated: it is built afresh next time.
        """
        try:
            self._catch_up(now)
        except BaseException:
            self.size = -1
            raise

    def _catch_up(self, now: float) -> None:
        columns = self.index.columns
        if (
            self.size != columns.size
            or self.aggregates_version != self.index.aggregates_version
            or now > self.up_until
        ):
            self.build(now)
            return
        rows = columns.changed_since(self.position)
        if rows is None or len(rows) * REBUILD_FRACTION > self.size:
            self.build(now)
            return
        self.position = columns.journal_end
        if len(rows):
            self.update(rows, now)

    def build(self, now: float) -> None:
        """Everything from scratch, over every row."""
        index = self.index
        self.position = index.columns.journal_end
        self.aggregates_version = index.aggregates_version
        cols = index.candidate_columns(now)
        cols.config = self.config
        self.size = n = index.columns.size
        passing = _masked(self.masks, cols, self.spec, cols["present"].copy())
        self.passing = passing
        self.n_passing = int(np.count_nonzero(passing))
        self.raw = [_scores(w, cols, self.spec, n) for w, _ in self.weighers]
        self.extremes = []
        for values in self.raw:
            extremes = Extremes()
            extremes.scan(values, passing)
            self.extremes.append(extremes)
        up = cols["up"] & cols["present"]
        self.up_until = self._stale_at(cols["heartbeat"][up])
        if len(self.jitter) != n:
            self.jitter = self._jitter(n)
        self.total = self._totals(None)
        self._pick_candidates(CANDIDATES)

    def update(self, rows: np.ndarray, now: float) -> None:
        """Redo the filters and weighers for `rows` (ascending) only."""
        base = self.index.candidate_columns(now, lazy=True)
        base.config = self.config
        view = self._view_of(base, rows)
        view["up"] = up = base.up_of(rows)
        present = base["present"][rows]
        new_pass = _masked(self.masks, view, self.spec, present.copy())
        heartbeats = base["heartbeat"][rows][up & present]
        self.up_until = min(self.up_until, self._stale_at(heartbeats))
        old_pass = self.passing[rows]
        self.passing[rows] = new_pass
        self.n_passing += int(np.count_nonzero(new_pass)) - int(np.count_nonzero(old_pass))
        was, now_passing = old_pass.tolist(), new_pass.tolist()
        moved = False
        for (w, _), values, extremes in zip(self.weighers, self.raw, self.extremes, strict=True):
            new = _scores(w, view, self.spec, len(rows))
            removed = list(compress(values[rows].tolist(), was))
            values[rows] = new
            added = list(compress(new.tolist(), now_passing))
            moved |= extremes.update(removed, added, values, self.passing)
        if moved:  # a weigher's min or max moved: every normalised score changes
            self.total = self._totals(None)
            self._pick_candidates(CANDIDATES)
            return
        self.total[rows] = self._totals(rows)
        joined = rows[(self.total[rows] >= self.threshold) & ~self.is_candidate[rows]]
        if len(joined):
            self.candidates = np.concatenate([self.candidates, joined])
            self.is_candidate[joined] = True

    def _stale_at(self, heartbeats: np.ndarray) -> float:
        if len(heartbeats) == 0:
            return np.inf
        return float(heartbeats.min()) + self.index.service_down_time

    def _totals(self, rows: np.ndarray | None) -> np.ndarray:
        """Totals of `rows` (None: all), with the very operations the uncached weigh uses,
        element for element, so they come out bit for bit the same."""
        where: Any = slice(None) if rows is None else rows
        total = self.jitter[where].copy()
        scratch = np.empty_like(total)
        for (_, mult), values, extremes in zip(self.weighers, self.raw, self.extremes, strict=True):
            lo, hi = extremes.lo, extremes.hi
            if lo is None or hi == lo:
                continue  # normalised to all zeros: adds nothing
            np.subtract(values[where], lo, out=scratch, casting="unsafe")
            scratch *= mult / float(hi - lo)
            total += scratch
        total[~self.passing[where]] = -np.inf
        return total

    def _pick_candidates(self, want: int) -> None:
        """Keep the rows at or above (about) the `want`-th best total."""
        count = min(want, self.n_passing)
        self.is_candidate = np.zeros(self.size, dtype=bool)
        if count == 0:
            self.candidates = np.zeros(0, dtype=np.int64)
            self.threshold = np.inf
            return
        self.threshold, self.candidates = top_cut(self.total, count, self.passing)
        self.is_candidate[self.candidates] = True

    # --- deciding --------------------------------------------------------------------------

    def scored_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every passing row and its total (for tests and tools; decisions use best())."""
        rows = np.flatnonzero(self.passing)
        return rows, self.total[rows]

    def best(self, k: int) -> np.ndarray:
        """The rows of the k best totals (k at most n_passing), best first.

        The kept tie-break is swapped for a fresh one among the candidates: with one
        fixed per shape, requests in flight together would all pick the same host among
        equals and all but one lose the claim's compare-and-set. A host outside the
        candidates can only be better by less than the tie-break, as with any jitter.
        """
        if len(self.candidates) > 8 * CANDIDATES:  # many rows joined since the cut
            self._pick_candidates(max(CANDIDATES, k))
        above = self.candidates[self.total[self.candidates] >= self.threshold]
        if len(above) < k:  # rows above the cut went down since: cut again
            self._pick_candidates(max(CANDIDATES, k))
            above = self.candidates
        scores = self.total[above] - self.jitter[above] + self._jitter(len(above))
        if k < len(above):
            top = np.argpartition(-scores, k - 1)[:k]
            above, scores = above[top], scores[top]
        return above[np.argsort(-scores, kind="stable")]


class ShapeCache:
    """A few recent shapes (least recently used dropped), and which requests may use them."""

    def __init__(
        self,
        index: Index,
        config: Config,
        filters: list[Filter],
        weighers: list[tuple[Weigher, float]],
        jitter: Callable[[int], np.ndarray],
        view_of: ViewOf,
        max_shapes: int = MAX_SHAPES,
    ) -> None:
        self.index = index
        self.config = config
        self.filters = filters
        self.weighers = weighers  # (weigher, multiplier) with non-zero multipliers
        self.jitter = jitter
        self.view_of = view_of
        self.max_shapes = max_shapes
        self.shapes: OrderedDict[bytes, Shape] = OrderedDict()
        self.seen: OrderedDict[bytes, None] = OrderedDict()

    def shape_for(self, spec: RequestSpec) -> Shape | None:
        """The kept shape of `spec`, made if seen before; None: decide it from scratch."""
        # ignore_hosts and requested_host are applied by the scheduler, not by a filter,
        # so a kept shape knows nothing of them (and both are rare: retries and moves).
        if self.max_shapes <= 0 or spec.ignore_hosts or spec.requested_host is not None:
            return None
        key = shape_key(spec)
        shape = self.shapes.get(key)
        if shape is not None:
            self.shapes.move_to_end(key)
            return shape
        if key not in self.seen:
            # The first of its kind may well be the last (a group member, a hint):
            # keeping it would push out a shape that repeats.
            self.seen[key] = None
            if len(self.seen) > SEEN:
                self.seen.popitem(last=False)
            return None
        shape = self._make(spec)
        if shape is not None:
            del self.seen[key]
            self.shapes[key] = shape
            if len(self.shapes) > self.max_shapes:
                self.shapes.popitem(last=False)
        return shape

    def _make(self, spec: RequestSpec) -> Shape | None:
        """A Shape of `spec`, or None if a filter or weigher that applies is not cacheable."""
        masks: list[tuple[Filter, MaskFunction]] = []
        for f in self.filters:
            try:
                if f.applies is not None and not f.applies(spec):
                    continue
                # Run as SQL if it has it (then None means nothing to test), else per host.
                if f.mask is None and f.sql is not None and f.sql(spec) is None:
                    continue
            except Exception as exc:
                raise PluginRaised("filter", f.name, exc) from exc
            if f.mask is None or not f.row_local:
                return None
            masks.append((f, f.mask))
        weighers = []
        for w, mult in self.weighers:
            try:
                if w.applies is not None and not w.applies(spec):
                    continue
            except Exception as exc:
                raise PluginRaised("weigher", w.name, exc) from exc
            if not w.row_local:
                return None
            weighers.append((w, mult))
        return Shape(self.index, self.config, spec, masks, weighers, self.jitter, self.view_of)
