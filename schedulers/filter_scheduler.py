"""The filter scheduler: Nova's filter-and-weigh pipeline over the inventory index.

SQL predicates of the enabled filters are pushed down into one DuckDB candidate query;
vectorised masks and then per-host checks narrow the result; weighers score what is
left, each normalised to 0..1 and multiplied. Hosts come back best first.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from hvmesh.core.models import RequestSpec
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import Columns, SchedulerContext


def normalise(values: np.ndarray) -> np.ndarray:
    """Scale to 0..1 as Nova's weigher normaliser does (all equal: all zero)."""
    lo = float(values.min())
    hi = float(values.max())
    if hi == lo:
        return np.zeros_like(values, dtype=np.float64)
    return (values - lo) / (hi - lo)


class FilterScheduler:
    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.scheduler

    def _multiplier(self, weigher: Any) -> float:
        if weigher.multiplier_option and hasattr(self.cfg, weigher.multiplier_option):
            return float(getattr(self.cfg, weigher.multiplier_option))
        return weigher.multiplier

    def filter(self, spec: RequestSpec) -> Columns:
        """Candidate columns of the hosts that pass every enabled filter."""
        where: list[str] = []
        params: list[Any] = []
        masks = []
        per_host = []
        for f in self.ctx.filters:
            if f.sql is not None:
                pred = f.sql(spec)
                if pred is not None:
                    where.append(pred[0])
                    params.extend(pred[1])
            elif f.mask is not None:
                masks.append(f)
            else:
                per_host.append(f)
        cols = self.ctx.index.candidates(where, params, exclude=spec.ignore_hosts)
        keep = np.ones(len(cols["name"]), dtype=bool)
        for f in masks:
            m = f.mask(cols, spec)
            if m is not None:
                keep &= m
        if per_host:
            for i in np.flatnonzero(keep):
                entry = self.ctx.index.hosts.get(str(cols["name"][i]))
                if entry is None or not all(f.host_passes(entry.value, spec) for f in per_host):
                    keep[i] = False
        return {k: v[keep] for k, v in cols.items()}

    def weigh(self, cols: Columns, spec: RequestSpec) -> np.ndarray:
        total = np.zeros(len(cols["name"]), dtype=np.float64)
        if len(total) == 0:
            return total
        for w in self.ctx.weighers:
            mult = self._multiplier(w)
            if mult:
                total += mult * normalise(np.asarray(w.weigh(cols, spec), dtype=np.float64))
        return total

    async def select(self, spec: RequestSpec) -> list[str]:
        cols = self.filter(spec)
        if len(cols["name"]) == 0:
            return []
        order = np.argsort(-self.weigh(cols, spec), kind="stable")
        names = [str(n) for n in cols["name"][order]]
        subset = min(self.cfg.host_subset_size, len(names))
        if subset > 1:
            head = names[:subset]
            random.shuffle(head)
            names[:subset] = head
        return names


@hookimpl
def hvmesh_register_schedulers(register: Any) -> None:
    register("filter_scheduler", FilterScheduler)
