"""The objects plugins hand to the register hooks: Filter, Weigher and SchedulerContext.

Candidate hosts reach filters and weighers as `Columns`: a dict of equal-length numpy
arrays, one per column of the inventory index's `hosts` table (name, availability_zone,
vcpus_free, memory_mb_free, disk_gb_free, running_vms, up, enabled, ...). Per-host
fallbacks get the host's full record (hvmesh.core.models.Host).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from hvmesh.core.config import Config
    from hvmesh.core.protocol.models import Host, RequestSpec
    from hvmesh.core.state.inventory import Index

Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class Filter:
    """A host filter; give at least one of `sql`, `mask`, `host_passes`."""

    name: str
    sql: Callable[[RequestSpec], tuple[str, list[Any]] | None] | None = None
    mask: Callable[[Columns, RequestSpec], np.ndarray | None] | None = None
    host_passes: Callable[[Host, RequestSpec], bool] | None = None
    #: A cheap check on the request alone: False skips the filter for it (every host
    #: passes). Worth giving with `host_passes`, which otherwise runs once per host.
    applies: Callable[[RequestSpec], bool] | None = None
    description: str = ""
    #: A promise about `mask`: a host's answer depends only on that host's columns, the
    #: request (but not its server_id) and the configuration; not on other hosts, the
    #: clock (except through `up`) or anything outside the index. The filter scheduler
    #: may then keep the mask between decisions and redo only the hosts that changed,
    #: calling `mask` with the columns of those hosts alone. See docs/plugins.md.
    row_local: bool = False

    def __post_init__(self) -> None:
        if not (self.sql or self.mask or self.host_passes):
            raise ValueError(f"filter {self.name}: give sql, mask or host_passes")


@dataclass(frozen=True)
class Weigher:
    """A host weigher: raw scores for every candidate, normalised by the scheduler.

    `multiplier_option` names a float option of the [scheduler] config section that
    overrides `multiplier` (for example "ram_weight_multiplier").
    """

    name: str
    weigh: Callable[[Columns, RequestSpec], np.ndarray]
    multiplier: float = 1.0
    multiplier_option: str | None = None
    #: A cheap check on the request alone: False skips the weigher for it.
    applies: Callable[[RequestSpec], bool] | None = None
    description: str = ""
    #: As for Filter: a host's raw score depends only on its own columns, the request
    #: (not its server_id) and the configuration, so scores may be kept between
    #: decisions and recomputed for changed hosts only. Normalising stays the scheduler's.
    row_local: bool = False


@dataclass
class SchedulerContext:
    """What a scheduler implementation is built with."""

    config: Config
    index: Index
    filters: list[Filter] = field(default_factory=list)
    weighers: list[Weigher] = field(default_factory=list)


class Scheduler(Protocol):
    def select(self, spec: RequestSpec) -> Awaitable[list[str]]: ...


SchedulerFactory = Callable[[SchedulerContext], Scheduler]
