"""Built-in host filters, named as Nova's so operators can carry their configuration over.

Each gives a vectorised mask over the index's columns (what the filter scheduler runs)
and, where it can be said in SQL, the same test as a predicate for DuckDB. They
register through the "hvmesh" entry point exactly as a third-party plugin would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hvmesh.core.models import RequestSpec
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import Columns, Filter


def _compute_mask(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["enabled"] & cols["up"]


def _az_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    if not spec.availability_zone:
        return None
    return cols["az_code"] == cols.zone_code(spec.availability_zone)  # type: ignore[attr-defined]


def _az_sql(spec: RequestSpec) -> tuple[str, list[Any]] | None:
    if not spec.availability_zone:
        return None
    return "availability_zone = ?", [spec.availability_zone]


def _fit(column: str, amount_of: Callable[[RequestSpec], int]) -> tuple[Any, Any]:
    def mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
        amount = amount_of(spec)
        return cols[column] >= amount if amount > 0 else None

    def sql(spec: RequestSpec) -> tuple[str, list[Any]] | None:
        amount = amount_of(spec)
        return (f"{column} >= ?", [amount]) if amount > 0 else None

    return mask, sql


_core_mask, _core_sql = _fit("vcpus_free", lambda s: s.flavor.vcpus)
_ram_mask, _ram_sql = _fit("memory_mb_free", lambda s: s.flavor.ram_mb)
_disk_mask, _disk_sql = _fit("disk_gb_free", lambda s: s.flavor.disk_gb)

BUILTIN_FILTERS = [
    Filter(
        name="ComputeFilter",
        mask=_compute_mask,
        description="Passes hosts whose service is enabled and heartbeating (up).",
    ),
    Filter(
        name="AvailabilityZoneFilter",
        mask=_az_mask,
        sql=_az_sql,
        description="Passes hosts in the requested availability zone.",
    ),
    Filter(
        name="CoreFilter",
        mask=_core_mask,
        sql=_core_sql,
        description="Passes hosts with enough free VCPU (after reserved and allocation ratio).",
    ),
    Filter(
        name="RamFilter",
        mask=_ram_mask,
        sql=_ram_sql,
        description="Passes hosts with enough free MEMORY_MB (after reserved and allocation ratio).",
    ),
    Filter(
        name="DiskFilter",
        mask=_disk_mask,
        sql=_disk_sql,
        description="Passes hosts with enough free DISK_GB (after reserved and allocation ratio).",
    ),
]


@hookimpl
def hvmesh_register_filters(register: Any) -> None:
    for f in BUILTIN_FILTERS:
        register(f)
