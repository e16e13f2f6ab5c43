"""Where the agent works in vCenter (datacenter, cluster, folder, pool) and what the cluster has, read in one PropertyCollector call.

Everything here runs on the session's worker thread (Session.call), given the service
instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from hvmesh.agents.driver import DriverError, NodeInventory
from hvmesh.core.config_drivers import VmwareSection

GIB = 1024**3
MIB = 1024**2
HYPERVISOR_TYPE = "VMware vCenter Server"

#: Host CPU features (HostFeatureCapability keys, value "1") -> os-traits names.
CPU_FEATURE_TRAITS = {
    "cpuid.AES": "HW_CPU_X86_AESNI",
    "cpuid.AVX": "HW_CPU_X86_AVX",
    "cpuid.AVX2": "HW_CPU_X86_AVX2",
    "cpuid.AVX512F": "HW_CPU_X86_AVX512F",
    "cpuid.FMA3": "HW_CPU_X86_FMA3",
    "cpuid.SSE3": "HW_CPU_X86_SSE3",
    "cpuid.SSSE3": "HW_CPU_X86_SSSE3",
    "cpuid.SSE41": "HW_CPU_X86_SSE41",
    "cpuid.SSE42": "HW_CPU_X86_SSE42",
    "cpuid.VMX": "HW_CPU_X86_VMX",
    "cpuid.SVM": "HW_CPU_X86_SVM",
}

HOST_PROPS = [
    "name",
    "summary.hardware.numCpuThreads",
    "summary.hardware.memorySize",
    "runtime.connectionState",
    "runtime.inMaintenanceMode",
    "config.featureCapability",
]
DATASTORE_PROPS = ["summary.name", "summary.capacity", "summary.freeSpace", "summary.accessible"]


@dataclass
class Location:
    """The managed objects the agent places instances with."""

    datacenter: Any
    datacenter_name: str
    cluster: Any
    #: The datacenter's VM folder: every VM of the datacenter is under it.
    vm_root: Any
    folder: Any
    pool: Any


@dataclass
class HostFacts:
    name: str
    moref: Any
    threads: int
    memory_bytes: int
    usable: bool
    features: set[str] = field(default_factory=set)


@dataclass
class DatastoreFacts:
    name: str
    moref: Any
    capacity: int
    free: int


@dataclass
class ClusterFacts:
    hosts: list[HostFacts]
    datastores: list[DatastoreFacts]


def _children(folder: Any, kind: type) -> list[Any]:
    """Objects of `kind` under `folder`, through sub-folders."""
    found: list[Any] = []
    for child in folder.childEntity:
        if isinstance(child, kind):
            found.append(child)
        elif isinstance(child, vim.Folder):
            found += _children(child, kind)
    return found


def locate(si: Any, cfg: VmwareSection) -> Location:
    """Find (or, for the folder, make) what [vmware] names; DriverError naming what is
    missing and what exists instead."""
    content = si.content
    dcs = _children(content.rootFolder, vim.Datacenter)
    if not dcs:
        raise DriverError(f"vCenter {cfg.host} has no datacenter")
    if cfg.datacenter:
        dcs = [dc for dc in dcs if dc.name == cfg.datacenter] or _missing(
            "datacenter",
            cfg.datacenter,
            [d.name for d in _children(content.rootFolder, vim.Datacenter)],
        )
    dc = dcs[0]
    computes = _children(dc.hostFolder, vim.ComputeResource)
    if cfg.cluster:
        matching = [c for c in computes if c.name == cfg.cluster]
        if not matching:
            _missing("cluster", cfg.cluster, [c.name for c in computes])
        cluster = matching[0]
    elif computes:
        cluster = computes[0]
    else:
        raise DriverError(f"datacenter {dc.name} has no cluster or host")
    folder = dc.vmFolder
    for part in (p for p in cfg.folder.split("/") if p):
        sub = [c for c in folder.childEntity if isinstance(c, vim.Folder) and c.name == part]
        folder = sub[0] if sub else folder.CreateFolder(part)
    pool = cluster.resourcePool
    if cfg.resource_pool:
        pools = _pools(pool)
        matching = [p for p in pools if p.name == cfg.resource_pool]
        if not matching:
            _missing("resource pool", cfg.resource_pool, [p.name for p in pools])
        pool = matching[0]
    return Location(
        datacenter=dc,
        datacenter_name=dc.name,
        cluster=cluster,
        vm_root=dc.vmFolder,
        folder=folder,
        pool=pool,
    )


def _pools(pool: Any) -> list[Any]:
    out = [pool]
    for child in pool.resourcePool:
        out += _pools(child)
    return out


def _missing(kind: str, name: str, found: list[str]) -> Any:
    raise DriverError(
        f"[vmware] names {kind} {name!r}, which vCenter does not have "
        f"(it has: {', '.join(sorted(found)) or 'none'})"
    )


def cluster_spec(cluster: Any) -> Any:
    """A filter spec reaching the cluster's hosts and datastores, reading what the
    inventory is made of (HOST_PROPS, DATASTORE_PROPS)."""
    PC = vmodl.query.PropertyCollector
    to_hosts = PC.TraversalSpec(name="hosts", type=vim.ComputeResource, path="host", skip=False)
    to_ds = PC.TraversalSpec(name="ds", type=vim.ComputeResource, path="datastore", skip=False)
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=cluster, skip=True, selectSet=[to_hosts, to_ds])],
        propSet=[
            PC.PropertySpec(type=vim.HostSystem, pathSet=HOST_PROPS),
            PC.PropertySpec(type=vim.Datastore, pathSet=DATASTORE_PROPS),
        ],
    )


def cluster_facts(si: Any, cluster: Any, datastore_regex: str) -> ClusterFacts:
    """The cluster's hosts and its datastores matching `datastore_regex`, in one
    RetrievePropertiesEx call (with its continuation pages)."""
    try:
        pattern = re.compile(datastore_regex or ".*")
    except re.error as exc:
        raise DriverError(f"[vmware] datastore_regex {datastore_regex!r}: {exc}") from None
    PC = vmodl.query.PropertyCollector
    spec = cluster_spec(cluster)
    collector = si.content.propertyCollector
    objects: list[Any] = []
    result = collector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
    while result is not None:
        objects += result.objects
        result = collector.ContinueRetrievePropertiesEx(result.token) if result.token else None
    hosts: list[HostFacts] = []
    datastores: list[DatastoreFacts] = []
    for obj in objects:
        props = {p.name: p.val for p in obj.propSet}
        if isinstance(obj.obj, vim.HostSystem):
            features = {
                f.key for f in props.get("config.featureCapability") or [] if f.value == "1"
            }
            hosts.append(
                HostFacts(
                    name=props.get("name", ""),
                    moref=obj.obj,
                    threads=int(props.get("summary.hardware.numCpuThreads") or 0),
                    memory_bytes=int(props.get("summary.hardware.memorySize") or 0),
                    usable=props.get("runtime.connectionState") == "connected"
                    and not props.get("runtime.inMaintenanceMode"),
                    features=features,
                )
            )
        elif isinstance(obj.obj, vim.Datastore):
            name = props.get("summary.name", "")
            if props.get("summary.accessible") and pattern.search(name):
                datastores.append(
                    DatastoreFacts(
                        name=name,
                        moref=obj.obj,
                        capacity=int(props.get("summary.capacity") or 0),
                        free=int(props.get("summary.freeSpace") or 0),
                    )
                )
    return ClusterFacts(hosts=hosts, datastores=datastores)


def node_inventory(si: Any, facts: ClusterFacts) -> NodeInventory:
    """The cluster as one provider: its usable hosts' threads and memory, its datastores'
    capacity; traits are the CPU features every usable host has."""
    usable = [h for h in facts.hosts if h.usable]
    common: set[str] = set.intersection(*(h.features for h in usable)) if usable else set()
    about = si.content.about
    return NodeInventory(
        vcpus=sum(h.threads for h in usable),
        memory_mb=sum(h.memory_bytes for h in usable) // MIB,
        local_gb=sum(d.capacity for d in facts.datastores) // GIB,
        hypervisor_type=HYPERVISOR_TYPE,
        hypervisor_version=str(about.version),
        traits=sorted(CPU_FEATURE_TRAITS[f] for f in common if f in CPU_FEATURE_TRAITS),
    )


def pick_datastore(facts: ClusterFacts, needed_bytes: int) -> DatastoreFacts:
    """The allowed datastore with the most free space; DriverError when none fits."""
    fitting = [d for d in facts.datastores if d.free >= needed_bytes]
    if not fitting:
        raise DriverError(
            f"no datastore allowed by [vmware] datastore_regex has {needed_bytes // GIB} GiB free"
        )
    return max(fitting, key=lambda d: d.free)
