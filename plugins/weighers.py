"""Built-in host weighers, named and scaled as Nova's (positive multiplier spreads)."""

from __future__ import annotations

import numpy as np

from hvmesh.core.protocol.messages import RequestSpec
from hvmesh.plugins import hookimpl
from hvmesh.plugins.api import AppliesFunction, Columns, RegisterWeigher, Weigher, WeighFunction
from hvmesh.plugins.filters import member_counts


def _free_ram(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["memory_mb_free"]


def _free_cpu(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["vcpus_free"]


def _free_disk(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["disk_gb_free"]


def _build_failures(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return -cols["failed_builds"]


def _io_ops(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["io_ops"]


def _num_instances(cols: Columns, spec: RequestSpec) -> np.ndarray:
    return cols["running_vms"]


def _soft(policy: str, sign: float) -> WeighFunction:
    def weigh(cols: Columns, spec: RequestSpec) -> np.ndarray:
        return sign * member_counts(cols, spec).astype(np.float64)

    return weigh


def _group_policy(policy: str) -> AppliesFunction:
    return lambda spec: spec.group is not None and spec.group.policy == policy


BUILTIN_WEIGHERS = [
    Weigher(
        name="RAMWeigher",
        row_local=True,
        weigh=_free_ram,
        multiplier_option="ram_weight_multiplier",
        description="Prefers hosts with more free RAM (negative multiplier: less, to pack).",
    ),
    Weigher(
        name="CPUWeigher",
        row_local=True,
        weigh=_free_cpu,
        multiplier_option="cpu_weight_multiplier",
        description="Prefers hosts with more free vCPUs (negative multiplier: fewer, to pack).",
    ),
    Weigher(
        name="DiskWeigher",
        row_local=True,
        weigh=_free_disk,
        multiplier_option="disk_weight_multiplier",
        description="Prefers hosts with more free disk (negative multiplier: less, to pack).",
    ),
    Weigher(
        name="ServerGroupSoftAffinityWeigher",
        row_local=True,
        weigh=_soft("soft-affinity", 1.0),
        applies=_group_policy("soft-affinity"),
        multiplier_option="soft_affinity_weight_multiplier",
        description="For a soft-affinity group: prefers hosts holding more of its members.",
    ),
    Weigher(
        name="ServerGroupSoftAntiAffinityWeigher",
        row_local=True,
        weigh=_soft("soft-anti-affinity", -1.0),
        applies=_group_policy("soft-anti-affinity"),
        multiplier_option="soft_anti_affinity_weight_multiplier",
        description="For a soft-anti-affinity group: prefers hosts holding fewer of its members.",
    ),
    Weigher(
        name="IoOpsWeigher",
        row_local=True,
        weigh=_io_ops,
        multiplier_option="io_ops_weight_multiplier",
        description="As Nova's: with the default negative multiplier, prefers hosts with "
        "fewer builds in progress.",
    ),
    Weigher(
        name="BuildFailureWeigher",
        row_local=True,
        weigh=_build_failures,
        multiplier_option="build_failure_weight_multiplier",
        description="Steers away from hosts whose recent spawns failed; as Nova's, its large "
        "default multiplier outweighs the others once any host has failures.",
    ),
    Weigher(
        name="NumInstancesWeigher",
        row_local=True,
        weigh=_num_instances,
        multiplier_option="num_instances_weight_multiplier",
        description="As Nova's: a positive multiplier prefers hosts with more servers, a "
        "negative one hosts with fewer; 0.0 (the default) ignores it.",
    ),
]


@hookimpl
def hvmesh_register_weighers(register: RegisterWeigher) -> None:
    for w in BUILTIN_WEIGHERS:
        register(w)
