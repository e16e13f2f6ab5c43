"""Built-in host filters, named as Nova's so operators can carry their configuration over.

They register through the "hvmesh" entry point exactly as a third-party plugin would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hvmesh.core.models import RequestSpec
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import Columns, Filter


def _compute_mask(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["enabled"] & cols["up"]


def _az_sql(spec: RequestSpec) -> tuple[str, list[Any]] | None:
    if not spec.availability_zone:
        return None
    return "availability_zone = ?", [spec.availability_zone]


def _fit_sql(column: str, amount_of: Any) -> Any:
    def sql(spec: RequestSpec) -> tuple[str, list[Any]] | None:
        amount = amount_of(spec)
        if amount <= 0:
            return None
        return f"{column} >= ?", [amount]

    return sql


BUILTIN_FILTERS = [
    Filter(
        name="ComputeFilter",
        mask=_compute_mask,
        description="Passes hosts whose service is enabled and heartbeating (up).",
    ),
    Filter(
        name="AvailabilityZoneFilter",
        sql=_az_sql,
        description="Passes hosts in the requested availability zone.",
    ),
    Filter(
        name="CoreFilter",
        sql=_fit_sql("vcpus_free", lambda s: s.flavor.vcpus),
        description="Passes hosts with enough free VCPU (after reserved and allocation ratio).",
    ),
    Filter(
        name="RamFilter",
        sql=_fit_sql("memory_mb_free", lambda s: s.flavor.ram_mb),
        description="Passes hosts with enough free MEMORY_MB (after reserved and allocation ratio).",
    ),
    Filter(
        name="DiskFilter",
        sql=_fit_sql("disk_gb_free", lambda s: s.flavor.disk_gb),
        description="Passes hosts with enough free DISK_GB (after reserved and allocation ratio).",
    ),
]


@hookimpl
def hvmesh_register_filters(register: Any) -> None:
    for f in BUILTIN_FILTERS:
        register(f)
