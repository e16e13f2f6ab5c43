"""Types of the plugin API: Columns, Filter, Weigher, SchedulerContext and the register callables.

`Filter`, `Weigher` and `SchedulerContext` are what plugins hand over; `RegisterFilter`,
`RegisterWeigher`, `RegisterScheduler` and `RegisterDriver` type the `register`
argument of the hooks in hookspecs.py.

Candidate hosts reach filters and weighers as `Columns`: equal-length numpy arrays, one
per column of the inventory index (read as `cols["vcpus_free"]`), plus a few lookups the
built-in filters need (`zone_code`, `has_trait`, `free`, ...) and the deployment's
configuration. Per-host fallbacks get the host's full record
(hvmesh.core.protocol.records.Host).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import numpy as np

if TYPE_CHECKING:
    from hvmesh.core.config import Config
    from hvmesh.core.protocol.messages import RequestSpec
    from hvmesh.core.protocol.records import Aggregate, Host
    from hvmesh.core.state.inventory import Index

ColumnName = Literal[
    "name",
    "driver",
    "availability_zone",
    "az_code",
    "hypervisor_type",
    "cpu_arch",
    "enabled",
    "up",
    "present",
    "heartbeat",
    "vcpus",
    "vcpus_used",
    "vcpus_free",
    "memory_mb",
    "memory_mb_used",
    "memory_mb_free",
    "local_gb",
    "local_gb_used",
    "disk_gb_free",
    "running_vms",
    "failed_builds",
    "io_ops",
    "revision",
]
"""The names `Columns[...]` accepts: the index's HOST_COLUMNS plus the computed `up`."""


class Columns(Protocol):
    """The hosts a mask or weigher is called for, one row per host, as numpy columns.

    Every array has one element per row (shape `(n,)`, where `n = len(cols["name"])`),
    in the same order; row `i` of every column and of every mask a method returns is
    the same host. A filter's mask must return a bool array of that shape, a weigher's
    scores a numeric one. The rows are every host of the index (including rows of
    deleted hosts, `present` false), the hosts that passed the filters (what weighers
    get), or a few changed hosts (row-local plugins, see docs/plugins.md): never assume
    which. Treat every array as read-only: they are views of the index's own arrays.

    `cols[name]`, by column (`ColumnName`):

    - `name`, `driver`, `availability_zone`, `hypervisor_type`, `cpu_arch`: object
      arrays of `str` (the host's name, its agent's driver, its effective zone, what
      its driver reports); `""` in a row whose host record has not arrived yet;
    - `az_code` int32: the zone as an integer code, compared with `zone_code(zone)`;
    - `enabled` bool: the host's status is `enabled`;
    - `up` bool: a heartbeat newer than `[DEFAULT] service_down_time`;
    - `present` bool: the host record exists (false for a deleted host's row);
    - `heartbeat` float64: time of the last heartbeat, seconds since the epoch;
    - `vcpus`, `memory_mb`, `local_gb` int64: the totals the hypervisor reports;
    - `vcpus_used`, `memory_mb_used`, `local_gb_used` int64: allocated to servers;
    - `vcpus_free`, `memory_mb_free`, `disk_gb_free` int64: what can still be
      allocated, (total - reserved) x allocation ratio - used;
    - `running_vms` int64: servers with an allocation on the host;
    - `failed_builds` int64: the host's recent failed spawns (BuildFailureWeigher);
    - `io_ops` int64: builds in progress on the host (IoOpsFilter, IoOpsWeigher);
    - `revision` int64: KV revision of the host record the row was taken from.

    Use `len(cols["name"])` for the number of rows, not `len(cols)`.
    """

    @property
    def config(self) -> Config:
        """The deployment's whole configuration, for example
        `cols.config.scheduler.max_instances_per_host`."""
        ...

    def __getitem__(self, column: ColumnName, /) -> np.ndarray:
        """One column, shape `(n,)`, with the dtype listed above."""
        ...

    def zone_code(self, zone: str, /) -> int:
        """The code of availability zone `zone`, to compare with the `az_code` column;
        -1 when no host is in that zone."""
        ...

    def has_trait(self, trait: str, /) -> np.ndarray:
        """Bool, shape `(n,)`: which hosts have `trait` (a host that is not enabled
        also has COMPUTE_STATUS_DISABLED). Kept by the index: do not modify it."""
        ...

    def host_of(self, server_id: str, /) -> str | None:
        """The name of the host holding the server's allocation, or None."""
        ...

    def row_of(self, host: str, /) -> int | None:
        """The position of host `host` among these rows, or None when it is not one
        of them."""
        ...

    def in_aggregates(self, predicate: Callable[[Aggregate], bool], /) -> np.ndarray:
        """Bool, shape `(n,)`: the hosts in at least one aggregate for which
        `predicate(aggregate)` holds."""
        ...

    def free(self, resource_class: str, /) -> np.ndarray:
        """Int64, shape `(n,)`: the free amount of custom resource class
        `resource_class` (for example CUSTOM_PCI_GPU) per host; zeros when no host has it."""
        ...


SqlFunction: TypeAlias = "Callable[[RequestSpec], tuple[str, list[Any]] | None]"
"""`sql(spec)`: a predicate over the `hosts` table and its `?` parameters; None tests nothing."""
MaskFunction: TypeAlias = "Callable[[Columns, RequestSpec], np.ndarray | None]"
"""`mask(cols, spec)`: a bool array over the rows of `cols` (True passes); None passes all."""
HostPassesFunction: TypeAlias = "Callable[[Host, RequestSpec], bool]"
"""`host_passes(host, spec)`: whether this one host passes."""
AppliesFunction: TypeAlias = "Callable[[RequestSpec], bool]"
"""`applies(spec)`: False skips the filter or weigher for that request."""
ClaimCheckFunction: TypeAlias = "Callable[[Host, RequestSpec, Config], str | None]"
"""`claim_check(host, spec, config)`: why `host` may not take the request's server (None:
it may), judged on the authoritative host record inside the claim's compare-and-set."""
WeighFunction: TypeAlias = "Callable[[Columns, RequestSpec], np.ndarray]"
"""`weigh(cols, spec)`: raw scores, one per row of `cols`, higher is better."""


@dataclass(frozen=True)
class Filter:
    """A host filter; give at least one of `sql`, `mask`, `host_passes`."""

    name: str
    sql: SqlFunction | None = None
    mask: MaskFunction | None = None
    host_passes: HostPassesFunction | None = None
    #: A cheap check on the request alone: False skips the filter for it (every host
    #: passes). Worth giving with `host_passes`, which otherwise runs once per host.
    applies: AppliesFunction | None = None
    description: str = ""
    #: A promise about `mask`: a host's answer depends only on that host's columns, the
    #: request (but not its server_id) and the configuration; not on other hosts, the
    #: clock (except through `up`) or anything outside the index. The filter scheduler
    #: may then keep the mask between decisions and redo only the hosts that changed,
    #: calling `mask` with the columns of those hosts alone. See docs/plugins.md.
    row_local: bool = False
    #: The filter's rule again, on the host record the claim writes (see
    #: ClaimCheckFunction), for a rule concurrent placements could beat on the index: a
    #: count of servers, the servers a hint names. Skipped when `applies` says False. See
    #: docs/plugins.md.
    claim_check: ClaimCheckFunction | None = None

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
    weigh: WeighFunction
    multiplier: float = 1.0
    multiplier_option: str | None = None
    #: A cheap check on the request alone: False skips the weigher for it.
    applies: AppliesFunction | None = None
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
    """A scheduler implementation: orders the hosts for a request, best first."""

    def select(self, spec: RequestSpec) -> Awaitable[list[str]]: ...


SchedulerFactory = Callable[[SchedulerContext], Scheduler]
"""`factory(context)`: builds a scheduler implementation once, when the service starts."""

RegisterFilter = Callable[[Filter], None]
"""What `hvmesh_register_filters` receives: `register(Filter(...))`."""
RegisterWeigher = Callable[[Weigher], None]
"""What `hvmesh_register_weighers` receives: `register(Weigher(...))`."""
RegisterScheduler = Callable[[str, SchedulerFactory], None]
"""What `hvmesh_register_schedulers` receives: `register(name, factory)`."""


class RegisterDriver(Protocol):
    """What `hvmesh_register_drivers` receives: `register(name, driver, requires=(),
    extra="", description="")`."""

    def __call__(
        self,
        name: str,
        driver: type | str,
        /,
        *,
        requires: Iterable[str] = (),
        extra: str = "",
        description: str = "",
    ) -> None:
        """Register `driver` (a ComputeDriver subclass, or its "module:Class" path) as `name`."""
        ...
