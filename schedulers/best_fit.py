"""The best-fit scheduler: pack each server onto the host it fills most tightly.

It applies the same enabled filters as the filter scheduler, then, instead of weighing,
orders hosts by what the request would leave free of their scarcest resource (as a
fraction of capacity): the smallest leftover first. Fleets that want hosts emptied for
maintenance or power savings pick it with `[scheduler] driver = best_fit`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import ColumnName, RegisterScheduler, SchedulerContext
from hvmesh.schedulers.filter_scheduler import TOP, FilterScheduler

# (free column, used column, flavor amount) per resource class; free + used is the
# capacity after reserved and allocation ratio, what "scarce" must be measured against.
_RESOURCES: tuple[tuple[ColumnName, ColumnName, Callable[[RequestSpec], int]], ...] = (
    ("vcpus_free", "vcpus_used", lambda s: s.flavor.resources()["VCPU"]),
    ("memory_mb_free", "memory_mb_used", lambda s: s.flavor.resources()["MEMORY_MB"]),
    ("disk_gb_free", "local_gb_used", lambda s: s.flavor.resources()["DISK_GB"]),
)


class BestFitScheduler:
    def __init__(self, ctx: SchedulerContext) -> None:
        self.filters = FilterScheduler(ctx)  # the same filters, in the same forms

    async def select(self, spec: RequestSpec) -> list[str]:
        cols, rows = self.filters.passing_rows(spec)
        if len(rows) == 0:
            return []
        leftover = np.full(len(rows), np.inf)
        for free_c, used_c, amount_of in _RESOURCES:
            free = cols[free_c][rows]
            capacity = np.maximum(free + cols[used_c][rows], 1).astype(np.float64)
            after = (free - amount_of(spec)) / capacity
            leftover = np.minimum(leftover, after)
        k = min(max(TOP, spec.num_alternates + 1), len(rows))
        best = np.argpartition(leftover, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        best = best[np.argsort(leftover[best], kind="stable")]
        return [str(n) for n in cols["name"][rows[best]]]


@hookimpl
def hvmesh_register_schedulers(register: RegisterScheduler) -> None:
    register("best_fit", BestFitScheduler)
