"""Built-in host filters, named as Nova's so operators can carry their configuration over.

Each gives a vectorised mask over the index's columns (what the filter scheduler runs)
and, where it can be said in SQL, the same test as a predicate for DuckDB; those whose
rule concurrent placements could beat on the index (instance and build counts, the
servers a hint names) also give a claim-time check on the host record. They register
through the "hvmesh" entry point exactly as a third-party plugin would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hvmesh.core.config import Config
from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.core.protocol.records import Aggregate, Host
from hvmesh.core.protocol.resources import custom_resources
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import (
    ColumnName,
    Columns,
    Filter,
    MaskFunction,
    RegisterFilter,
    SqlFunction,
)
from hvmesh.plugins.extra_specs import matches


def _compute_mask(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["enabled"] & cols["up"]


def _az_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    if not spec.availability_zone:
        return None
    return cols["az_code"] == cols.zone_code(spec.availability_zone)


def _az_sql(spec: RequestSpec) -> tuple[str, list[Any]] | None:
    if not spec.availability_zone:
        return None
    return "availability_zone = ?", [spec.availability_zone]


def _fit(
    column: ColumnName, amount_of: Callable[[RequestSpec], int]
) -> tuple[MaskFunction, SqlFunction]:
    def mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
        amount = amount_of(spec)
        return cols[column] >= amount if amount > 0 else None

    def sql(spec: RequestSpec) -> tuple[str, list[Any]] | None:
        amount = amount_of(spec)
        return (f"{column} >= ?", [amount]) if amount > 0 else None

    return mask, sql


def _capabilities(spec: RequestSpec) -> dict[str, str]:
    return {
        k.split(":", 1)[1]: v
        for k, v in spec.flavor.extra_specs.items()
        if k.startswith("capabilities:")
    }


def _host_capability(host: Host, name: str) -> object:
    inv = host.inventories
    known = {
        "hypervisor_type": host.hypervisor_type,
        "hypervisor_version": host.hypervisor_version,
        "cpu_arch": host.cpu_arch,
        "vcpus": inv["VCPU"].total if "VCPU" in inv else None,
        "memory_mb": inv["MEMORY_MB"].total if "MEMORY_MB" in inv else None,
        "local_gb": inv["DISK_GB"].total if "DISK_GB" in inv else None,
        "availability_zone": host.availability_zone,
    }
    return known.get(name)


def _capabilities_pass(host: Host, spec: RequestSpec) -> bool:
    for name, requirement in _capabilities(spec).items():
        value = _host_capability(host, name)
        if value is None or not matches(value, requirement):
            return False
    return True


# Image properties that name what the host must be, and the column holding it.
_IMAGE_PROPERTY_COLUMNS: dict[str, ColumnName] = {
    "hypervisor_type": "hypervisor_type",
    "img_hv_type": "hypervisor_type",
    "hw_architecture": "cpu_arch",
    "architecture": "cpu_arch",
}


def _image_properties_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    mask = None
    for prop, column in _IMAGE_PROPERTY_COLUMNS.items():
        wanted = spec.image_properties.get(prop)
        if wanted:
            m = cols[column] == wanted
            mask = m if mask is None else mask & m
    return mask


def _traits_wanted(spec: RequestSpec) -> tuple[set[str], set[str]]:
    required: set[str] = set()
    forbidden: set[str] = set()
    for source in (spec.flavor.extra_specs, spec.image_properties):
        for key, value in source.items():
            if key.startswith("trait:"):
                (
                    required
                    if value == "required"
                    else forbidden
                    if value == "forbidden"
                    else set()
                ).add(key[len("trait:") :])
    return required, forbidden


def _traits_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    required, forbidden = _traits_wanted(spec)
    if not required and not forbidden:
        return None
    mask = np.ones(len(cols["name"]), dtype=bool)
    for t in required:
        mask &= cols.has_trait(t)
    for t in forbidden:
        mask &= ~cols.has_trait(t)
    return mask


def _io_ops_mask(cols: Columns, spec: RequestSpec) -> np.ndarray:
    limit = cols.config.scheduler.max_io_ops_per_host
    return cols["io_ops"] < limit


def _num_instances_mask(cols: Columns, spec: RequestSpec) -> np.ndarray:
    limit = cols.config.scheduler.max_instances_per_host
    return cols["running_vms"] < limit


# Claim-time checks: the same rules on the host record a claim writes, so that
# simultaneous placements cannot each pass them on the index (see docs/plugins.md).


def _io_ops_claim(host: Host, spec: RequestSpec, config: Config) -> str | None:
    limit = config.scheduler.max_io_ops_per_host
    busy = len(host.in_progress)
    return f"{busy} builds in progress, limit {limit}" if busy >= limit else None


def _num_instances_claim(host: Host, spec: RequestSpec, config: Config) -> str | None:
    limit = config.scheduler.max_instances_per_host
    held = len(host.allocations)  # every consumer, a move's too: as running_vms counts
    return f"{held} servers, limit {limit}" if held >= limit else None


def _same_host_claim(host: Host, spec: RequestSpec, config: Config) -> str | None:
    ids = spec.scheduler_hints.same_host
    if not ids or any(sid in host.allocations for sid in ids):
        return None
    return "holds none of the same_host servers"


def _different_host_claim(host: Host, spec: RequestSpec, config: Config) -> str | None:
    near = [sid for sid in spec.scheduler_hints.different_host if sid in host.allocations]
    return f"holds different_host server {near[0]}" if near else None


def _hosts_of(cols: Columns, server_ids: list[str]) -> np.ndarray:
    mask = np.zeros(len(cols["name"]), dtype=bool)
    for sid in server_ids:
        host = cols.host_of(sid)
        row = cols.row_of(host) if host else None
        if row is not None:
            mask[row] = True
    return mask


def _same_host_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    ids = spec.scheduler_hints.same_host
    return _hosts_of(cols, ids) if ids else None


def _different_host_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    ids = spec.scheduler_hints.different_host
    return ~_hosts_of(cols, ids) if ids else None


def member_counts(cols: Columns, spec: RequestSpec) -> np.ndarray:
    """How many of the server's group members each host holds (zeros without a group)."""
    counts = np.zeros(len(cols["name"]), dtype=np.int64)
    if spec.group is None:
        return counts
    for host in spec.group.member_hosts:
        row = cols.row_of(host)
        if row is not None:
            counts[row] += 1
    return counts


def _affinity_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    if spec.group is None or spec.group.policy != "affinity":
        return None
    counts = member_counts(cols, spec)
    return counts > 0 if counts.any() else None  # the first member may go anywhere


def _anti_affinity_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    if spec.group is None or spec.group.policy != "anti-affinity":
        return None
    return member_counts(cols, spec) < spec.group.max_server_per_host


_AGGREGATE_SCOPE = "aggregate_instance_extra_specs:"


def _aggregate_specs(spec: RequestSpec) -> dict[str, str]:
    return {
        k[len(_AGGREGATE_SCOPE) :]: v
        for k, v in spec.flavor.extra_specs.items()
        if k.startswith(_AGGREGATE_SCOPE)
    }


def _aggregate_extra_specs_mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
    mask = None
    for key, requirement in _aggregate_specs(spec).items():

        def wanted(agg: Aggregate, key: str = key, requirement: str = requirement) -> bool:
            values = agg.metadata.get(key)
            return values is not None and any(
                matches(v.strip(), requirement) for v in values.split(",")
            )

        m = cols.in_aggregates(wanted)
        mask = m if mask is None else mask & m
    return mask


def _tenants(agg: Aggregate) -> set[str] | None:
    """The projects an aggregate is isolated for (None: not isolating)."""
    keys = [k for k in agg.metadata if k.startswith("filter_tenant_id")]
    if not keys:
        return None
    return {t.strip() for k in keys for t in agg.metadata[k].split(",") if t.strip()}


def _tenant_isolation_mask(cols: Columns, spec: RequestSpec) -> np.ndarray:
    restricted = cols.in_aggregates(lambda a: _tenants(a) is not None)
    if not restricted.any():
        return np.ones(len(cols["name"]), dtype=bool)
    allowed = cols.in_aggregates(lambda a: spec.project in (_tenants(a) or ()))
    return ~restricted | allowed


def _pci_requests(spec: RequestSpec) -> dict[str, int]:
    wanted = custom_resources(spec.flavor.extra_specs)
    return {rc: n for rc, n in wanted.items() if rc.startswith("CUSTOM_PCI_")}


def _other_custom_requests(spec: RequestSpec) -> dict[str, int]:
    wanted = custom_resources(spec.flavor.extra_specs)
    return {rc: n for rc, n in wanted.items() if not rc.startswith("CUSTOM_PCI_")}


def _free_mask(requests_of: Callable[[RequestSpec], dict[str, int]]) -> MaskFunction:
    def mask(cols: Columns, spec: RequestSpec) -> np.ndarray | None:
        result = None
        for rc, n in requests_of(spec).items():
            m = cols.free(rc) >= n
            result = m if result is None else result & m
        return result

    return mask


# What the flavor asks for, its resources:VCPU=... overrides included (Flavor.resources).
_core_mask, _core_sql = _fit("vcpus_free", lambda s: s.flavor.resources()["VCPU"])
_ram_mask, _ram_sql = _fit("memory_mb_free", lambda s: s.flavor.resources()["MEMORY_MB"])
_disk_mask, _disk_sql = _fit("disk_gb_free", lambda s: s.flavor.resources()["DISK_GB"])

BUILTIN_FILTERS = [
    Filter(
        name="ComputeFilter",
        row_local=True,
        mask=_compute_mask,
        description="Passes hosts whose service is enabled and heartbeating (up).",
    ),
    Filter(
        name="AvailabilityZoneFilter",
        row_local=True,
        mask=_az_mask,
        sql=_az_sql,
        description="Passes hosts in the requested availability zone.",
    ),
    Filter(
        name="CoreFilter",
        row_local=True,
        mask=_core_mask,
        sql=_core_sql,
        description="Passes hosts with enough free VCPU (after reserved and allocation ratio).",
    ),
    Filter(
        name="RamFilter",
        row_local=True,
        mask=_ram_mask,
        sql=_ram_sql,
        description="Passes hosts with enough free MEMORY_MB (after reserved and allocation ratio).",
    ),
    Filter(
        name="DiskFilter",
        row_local=True,
        mask=_disk_mask,
        sql=_disk_sql,
        description="Passes hosts with enough free DISK_GB (after reserved and allocation ratio).",
    ),
    Filter(
        name="ComputeCapabilitiesFilter",
        host_passes=_capabilities_pass,
        applies=lambda spec: bool(_capabilities(spec)),
        description="Passes hosts matching the flavor's capabilities:* extra specs "
        "(hypervisor_type, hypervisor_version, cpu_arch, vcpus, memory_mb, local_gb), "
        "with Nova's operators (s==, >=, <in>, <or>, ...).",
    ),
    Filter(
        name="ImagePropertiesFilter",
        row_local=True,
        mask=_image_properties_mask,
        description="Passes hosts whose hypervisor type and CPU architecture are what the "
        "image's hypervisor_type/img_hv_type and hw_architecture/architecture ask for.",
    ),
    Filter(
        name="TraitsFilter",
        row_local=True,
        mask=_traits_mask,
        description="Passes hosts that have every trait marked required and none marked "
        "forbidden (trait:NAME=required|forbidden in flavor extra specs or image "
        "properties). A disabled host has COMPUTE_STATUS_DISABLED.",
    ),
    Filter(
        name="IoOpsFilter",
        row_local=True,
        claim_check=_io_ops_claim,
        mask=_io_ops_mask,
        description="Passes hosts with fewer than [scheduler] max_io_ops_per_host builds "
        "in progress.",
    ),
    Filter(
        name="NumInstancesFilter",
        row_local=True,
        claim_check=_num_instances_claim,
        mask=_num_instances_mask,
        description="Passes hosts with fewer than [scheduler] max_instances_per_host servers.",
    ),
    Filter(
        name="ServerGroupAffinityFilter",
        # Not row-local: whether any host holds a member decides what every host gets.
        mask=_affinity_mask,
        applies=lambda spec: spec.group is not None and spec.group.policy == "affinity",
        description="For a server in an affinity group: only the host its members are on.",
    ),
    Filter(
        name="ServerGroupAntiAffinityFilter",
        row_local=True,
        mask=_anti_affinity_mask,
        applies=lambda spec: spec.group is not None and spec.group.policy == "anti-affinity",
        description="For a server in an anti-affinity group: only hosts holding fewer than "
        "max_server_per_host of its members.",
    ),
    Filter(
        name="AggregateInstanceExtraSpecsFilter",
        row_local=True,
        mask=_aggregate_extra_specs_mask,
        applies=lambda spec: bool(_aggregate_specs(spec)),
        description="Passes hosts in an aggregate whose metadata matches each of the "
        "flavor's aggregate_instance_extra_specs:KEY extra specs (Nova's operators; "
        "comma-separated metadata values match if any does).",
    ),
    Filter(
        name="AggregateMultiTenancyIsolation",
        row_local=True,
        mask=_tenant_isolation_mask,
        description="Hosts in an aggregate with filter_tenant_id metadata take only those "
        "projects' servers; other hosts take anyone's.",
    ),
    Filter(
        name="PciPassthroughFilter",
        row_local=True,
        mask=_free_mask(_pci_requests),
        applies=lambda spec: "pci_passthrough:alias" in spec.flavor.extra_specs,
        description="Passes hosts with enough free PCI devices for the flavor's "
        "pci_passthrough:alias (each alias is the resource class CUSTOM_PCI_<ALIAS>).",
    ),
    Filter(
        name="CustomResourceFilter",
        row_local=True,
        mask=_free_mask(_other_custom_requests),
        applies=lambda spec: any(
            k.startswith("resources:CUSTOM_") for k in spec.flavor.extra_specs
        ),
        description="Passes hosts with enough free of each resources:CUSTOM_* the flavor asks for.",
    ),
    Filter(
        name="SameHostFilter",
        row_local=True,
        applies=lambda spec: bool(spec.scheduler_hints.same_host),
        claim_check=_same_host_claim,
        mask=_same_host_mask,
        description="With the scheduler hint same_host: passes only hosts holding one of "
        "those servers.",
    ),
    Filter(
        name="DifferentHostFilter",
        row_local=True,
        applies=lambda spec: bool(spec.scheduler_hints.different_host),
        claim_check=_different_host_claim,
        mask=_different_host_mask,
        description="With the scheduler hint different_host: passes only hosts holding "
        "none of those servers.",
    ),
]


@hookimpl
def hvmesh_register_filters(register: RegisterFilter) -> None:
    for f in BUILTIN_FILTERS:
        register(f)
