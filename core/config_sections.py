"""The services' configuration sections: conductor, scheduler, compute agents and their drivers.

core/config.py assembles them with the process-wide sections into one Config.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct


class ConductorSection(Struct, kw_only=True, forbid_unknown_fields=True):
    max_attempts: Annotated[
        int,
        Meta(
            ge=1,
            description="Hosts tried for one build before it ends in ERROR (Nova's scheduler.max_attempts).",
        ),
    ] = 3
    task_ack_wait: Annotated[
        float,
        Meta(
            gt=0, description="Seconds before a task held by a dead conductor is handed to another."
        ),
    ] = 30.0
    workers: Annotated[
        int, Meta(ge=1, description="Tasks and events one conductor handles at once.")
    ] = 64
    action_timeout: Annotated[
        float,
        Meta(
            gt=0,
            description="Seconds a host may take over one step of an action (a spawn, a "
            "reboot, ...) before the action fails: a dead agent never hangs a server.",
        ),
    ] = 300.0
    resize_confirm_window: Annotated[
        float,
        Meta(
            ge=0,
            description="Seconds after which a resized or migrated server is confirmed "
            "automatically (0: never, as Nova's default).",
        ),
    ] = 0.0
    shelved_offload_time: Annotated[
        float,
        Meta(
            ge=-1,
            description="Seconds a shelved server keeps its host before it is offloaded "
            "(0: at once, -1: never), as Nova's.",
        ),
    ] = 0.0
    max_deliveries: Annotated[
        int,
        Meta(
            ge=1,
            description="Times one task, event or agent work item is delivered before it is "
            "given up: its server or action ends with a fault naming the cause, and the "
            "message is kept for `hvmesh manage tasks`.",
        ),
    ] = 8
    retry_delay: Annotated[
        float,
        Meta(
            gt=0,
            description="Seconds before a failed delivery is retried; each later retry "
            "waits twice as long, up to retry_delay_max.",
        ),
    ] = 2.0
    retry_delay_max: Annotated[
        float, Meta(gt=0, description="Longest wait between two deliveries of one message.")
    ] = 60.0
    scheduler_deadline: Annotated[
        float,
        Meta(
            gt=0,
            description="Seconds a build waits for a scheduler to answer (all of them away) "
            "before it ends in ERROR; one that answers within it lets the build go on.",
        ),
    ] = 300.0
    host_check_interval: Annotated[
        float,
        Meta(
            gt=0,
            description="Seconds between checks for hosts that stopped heartbeating; work "
            "waiting on such a host fails over without waiting for action_timeout.",
        ),
    ] = 5.0


class SchedulerSection(Struct, kw_only=True, forbid_unknown_fields=True):
    driver: Annotated[str, Meta(description="Scheduler implementation, by registered name.")] = (
        "filter_scheduler"
    )
    enabled_filters: Annotated[
        list[str], Meta(description="Filters applied: a host must pass all of them.")
    ] = msgspec.field(
        default_factory=lambda: [
            "ComputeFilter",
            "AvailabilityZoneFilter",
            "CoreFilter",
            "RamFilter",
            "DiskFilter",
            "ComputeCapabilitiesFilter",
            "ImagePropertiesFilter",
            "TraitsFilter",
            "ServerGroupAffinityFilter",
            "ServerGroupAntiAffinityFilter",
            "PciPassthroughFilter",
            "CustomResourceFilter",
            "SameHostFilter",
            "DifferentHostFilter",
        ]
    )
    weighers: Annotated[list[str], Meta(description="Weighers applied; their scores add up.")] = (
        msgspec.field(
            default_factory=lambda: [
                "RAMWeigher",
                "CPUWeigher",
                "DiskWeigher",
                "ServerGroupSoftAffinityWeigher",
                "ServerGroupSoftAntiAffinityWeigher",
                "IoOpsWeigher",
                "BuildFailureWeigher",
                "NumInstancesWeigher",
            ]
        )
    )
    host_subset_size: Annotated[
        int,
        Meta(
            ge=1,
            description="Pick at random among this many best hosts, to spread concurrent schedulers.",
        ),
    ] = 1
    ram_weight_multiplier: Annotated[
        float, Meta(description="Positive spreads by free RAM, negative packs.")
    ] = 1.0
    cpu_weight_multiplier: Annotated[
        float, Meta(description="Positive spreads by free vCPUs, negative packs.")
    ] = 1.0
    max_claim_attempts: Annotated[
        int,
        Meta(ge=1, description="Compare-and-set retries on one host before moving to the next."),
    ] = 5
    workers: Annotated[
        int, Meta(ge=1, description="Placement requests one scheduler handles at once.")
    ] = 64
    weight_multipliers: Annotated[
        list[str],
        Meta(
            description="Multipliers by weigher name, as Name=value (for any weigher, "
            "plugins' included); they override the weigher's own and the options above."
        ),
    ] = msgspec.field(default_factory=list)
    io_ops_weight_multiplier: Annotated[
        float,
        Meta(description="IoOpsWeigher: negative prefers hosts with fewer builds in progress."),
    ] = -1.0
    max_io_ops_per_host: Annotated[
        int, Meta(ge=1, description="IoOpsFilter: most builds in progress on one host.")
    ] = 8
    build_failure_weight_multiplier: Annotated[
        float, Meta(ge=0, description="BuildFailureWeigher's weight (Nova's default: 1000000).")
    ] = 1_000_000.0
    soft_affinity_weight_multiplier: Annotated[
        float, Meta(ge=0, description="ServerGroupSoftAffinityWeigher's weight.")
    ] = 1.0
    soft_anti_affinity_weight_multiplier: Annotated[
        float, Meta(ge=0, description="ServerGroupSoftAntiAffinityWeigher's weight.")
    ] = 1.0
    max_instances_per_host: Annotated[
        int, Meta(ge=1, description="NumInstancesFilter: most servers one host may hold.")
    ] = 50
    disk_weight_multiplier: Annotated[
        float, Meta(description="DiskWeigher: positive spreads by free disk, negative packs.")
    ] = 1.0
    num_instances_weight_multiplier: Annotated[
        float,
        Meta(
            description="NumInstancesWeigher: positive prefers hosts with more servers, negative fewer."
        ),
    ] = 0.0


class ComputeSection(Struct, kw_only=True, forbid_unknown_fields=True):
    host: Annotated[
        str, Meta(description="This agent's host name (defaults to the machine's).")
    ] = ""
    availability_zone: Annotated[str, Meta(description="Availability zone the host reports.")] = (
        "nova"
    )
    cpu_allocation_ratio: Annotated[float, Meta(gt=0, description="VCPU overcommit ratio.")] = 4.0
    ram_allocation_ratio: Annotated[
        float, Meta(gt=0, description="MEMORY_MB overcommit ratio.")
    ] = 1.0
    disk_allocation_ratio: Annotated[float, Meta(gt=0, description="DISK_GB overcommit ratio.")] = (
        1.0
    )
    reserved_host_cpus: Annotated[int, Meta(ge=0, description="VCPUs kept for the host.")] = 0
    reserved_host_memory_mb: Annotated[
        int, Meta(ge=0, description="MEMORY_MB kept for the host.")
    ] = 512
    reserved_host_disk_gb: Annotated[int, Meta(ge=0, description="DISK_GB kept for the host.")] = 0
    heartbeat_interval: Annotated[float, Meta(gt=0, description="Seconds between heartbeats.")] = (
        10.0
    )
    workers: Annotated[int, Meta(ge=1, description="Work items one agent runs at once.")] = 8
    reconcile_interval: Annotated[
        float,
        Meta(
            ge=0,
            description="Seconds between checks for instances on this hypervisor that no "
            "server owns (left by a failed spawn or move), which are then removed (0: only "
            "at start).",
        ),
    ] = 60.0
    sync_power_state_interval: Annotated[
        float,
        Meta(
            gt=0,
            description="Seconds between reports of every instance's power state as the "
            "hypervisor sees it (Nova's sync_power_state_interval).",
        ),
    ] = 600.0
    image_cache_dir: Annotated[
        str,
        Meta(
            description="Where an agent keeps the images it fetched, one file per sha256 "
            "(default: <state dir>/images where the state dir is $HVMESH_STATE_DIR or ~/.local/share/hvmesh)."
        ),
    ] = ""
    image_cache_max_gb: Annotated[
        float,
        Meta(
            ge=0,
            description="Size the image cache is trimmed to: unused images go, least "
            "recently used first (0: no limit).",
        ),
    ] = 50.0
    physical_network_mappings: Annotated[
        list[str],
        Meta(
            description="PHYSNET:DEVICE pairs: the local bridge (libvirt), port group "
            "(VMware) or virtual switch (Hyper-V) each physical network maps to on this host "
            "(physnet1:br0). A VLAN network becomes DEVICE with its VLAN tag.",
        ),
    ] = msgspec.field(default_factory=list)


class MetadataSection(Struct, kw_only=True, forbid_unknown_fields=True):
    listen: Annotated[str, Meta(description="Address the metadata service listens on.")] = "0.0.0.0"
    port: Annotated[int, Meta(ge=0, le=65535, description="Its TCP port (Nova's 8775).")] = 8775
    use_forwarded_for: Annotated[
        bool,
        Meta(
            description="Take the instance's address from X-Forwarded-For when the request "
            "comes from one of trusted_proxies (a metadata proxy in front)."
        ),
    ] = False
    trusted_proxies: Annotated[
        list[str], Meta(description="Addresses whose X-Forwarded-For header is believed.")
    ] = msgspec.field(default_factory=lambda: ["127.0.0.1"])
    vendor_data: Annotated[
        str, Meta(description="Path to a JSON file served as vendor_data.json ({} if unset).")
    ] = ""
    cache_seconds: Annotated[
        float, Meta(ge=0, description="Seconds one instance's metadata is kept in memory.")
    ] = 15.0


class LibvirtSection(Struct, kw_only=True, forbid_unknown_fields=True):
    uri: Annotated[str, Meta(description="libvirt connection URI (Nova's connection_uri).")] = (
        "qemu:///system"
    )
    virt_type: Annotated[
        str, Meta(description="Domain type: kvm, or qemu for software emulation.")
    ] = "kvm"
    cpu_mode: Annotated[
        str,
        Meta(
            description="Guest CPU mode: host-model, host-passthrough, custom or none "
            "(default: host-model with virt_type kvm, none with qemu)."
        ),
    ] = ""
    cpu_model: Annotated[str, Meta(description="CPU model when cpu_mode is custom.")] = ""
    storage_pool: Annotated[
        str, Meta(description="libvirt storage pool holding instance disks (a dir pool).")
    ] = "hvmesh"
    storage_pool_path: Annotated[
        str,
        Meta(description="Directory of that pool, made if missing (default: <state dir>/disks)."),
    ] = ""
    console_log_dir: Annotated[
        str,
        Meta(
            description="Where each guest's serial console is logged (default: <state dir>/console)."
        ),
    ] = ""
    reconnect_max_delay: Annotated[
        float, Meta(gt=0, description="Longest wait between reconnects to libvirtd, seconds.")
    ] = 30.0
    live_migration_uri: Annotated[
        str,
        Meta(
            description="URI of a destination libvirtd for live and cold migration; %s is the "
            "destination host's name (qemu+tcp://%s/system)."
        ),
    ] = "qemu+tcp://%s/system"
    shutdown_timeout: Annotated[
        float,
        Meta(
            ge=0,
            description="Seconds a guest gets to shut down cleanly when powered off before "
            "it is stopped hard (0: stop hard at once).",
        ),
    ] = 60.0
    instances_path: Annotated[
        str,
        Meta(
            description="Where per-instance files live, one directory per server id "
            "(a config drive as disk.config; default: <state dir>/instances)."
        ),
    ] = ""
    pci_alias: Annotated[
        list[str],
        Meta(
            description="PCI aliases flavors ask for in pci_passthrough:alias, as "
            "ALIAS:VENDOR_ID:PRODUCT_ID in hex (gpu:10de:1eb8)."
        ),
    ] = msgspec.field(default_factory=list)
    vlan_bridge: Annotated[
        str,
        Meta(
            description="How a VLAN network is plugged: empty tags the port on the mapped "
            "Open vSwitch bridge; otherwise the name of a Linux bridge already carrying "
            "that VLAN, with {bridge} and {vlan} replaced (br{vlan}, {bridge}v{vlan})."
        ),
    ] = ""


class VmwareSection(Struct, kw_only=True, forbid_unknown_fields=True):
    host: Annotated[
        str, Meta(description="vCenter (or standalone ESXi) address the agent manages.")
    ] = ""
    port: Annotated[int, Meta(ge=1, le=65535, description="vCenter's HTTPS port.")] = 443
    username: Annotated[str, Meta(description="vCenter user the agent logs in as.")] = ""
    password: Annotated[str, Meta(description="That user's password.")] = ""
    ca_file: Annotated[
        str,
        Meta(
            description="PEM file of the CA that signed vCenter's certificate (default: the system's)."
        ),
    ] = ""
    insecure: Annotated[
        bool,
        Meta(description="Skip TLS certificate verification (tests and labs only)."),
    ] = False
    datacenter: Annotated[
        str, Meta(description="Datacenter holding the cluster (default: the only or first one).")
    ] = ""
    cluster: Annotated[
        str,
        Meta(
            description="Cluster this agent manages, one agent per cluster (default: the "
            "datacenter's first compute resource, a standalone ESXi host included)."
        ),
    ] = ""
    datastore_regex: Annotated[
        str,
        Meta(
            description="Regular expression of the datastores instances may use; the first "
            "match with the most free space holds a new instance (default: all)."
        ),
    ] = ""
    folder: Annotated[
        str,
        Meta(
            description="VM folder new instances go to, a path under the datacenter's vm "
            "folder, made if missing (default: that folder itself)."
        ),
    ] = ""
    resource_pool: Annotated[
        str,
        Meta(
            description="Resource pool of the cluster new instances go to (default: its root pool)."
        ),
    ] = ""
    host_per_provider: Annotated[
        bool,
        Meta(
            description="Report each ESXi host of the cluster as its own provider (named "
            "after the host) instead of the whole cluster as one; servers then land on, and "
            "move between, named ESXi hosts. Hosts joining the cluster appear when the "
            "agent restarts."
        ),
    ] = False
    image_cache_folder: Annotated[
        str,
        Meta(description="Datastore folder where images are uploaded once and copied from."),
    ] = "hvmesh_images"
    connection_retries: Annotated[
        int,
        Meta(ge=0, description="Times the first connection is retried before the agent fails."),
    ] = 3
    connection_backoff: Annotated[
        float,
        Meta(
            gt=0,
            description="Seconds before a reconnect; each later one waits twice as long, up "
            "to 30 s.",
        ),
    ] = 1.0
    task_poll_interval: Annotated[
        float,
        Meta(gt=0, description="Seconds between two looks at a running vCenter task."),
    ] = 0.5
    task_timeout: Annotated[
        float,
        Meta(gt=0, description="Seconds one vCenter task may run before it counts as failed."),
    ] = 600.0


class FakeSection(Struct, kw_only=True, forbid_unknown_fields=True):
    vcpus: Annotated[int, Meta(ge=1, description="VCPUs each simulated host has.")] = 16
    memory_mb: Annotated[int, Meta(ge=1, description="MEMORY_MB each simulated host has.")] = 65536
    local_gb: Annotated[int, Meta(ge=1, description="DISK_GB each simulated host has.")] = 1000
    spawn_delay: Annotated[float, Meta(ge=0, description="Seconds a simulated spawn takes.")] = 0.5
    destroy_delay: Annotated[
        float, Meta(ge=0, description="Seconds a simulated destroy takes.")
    ] = 0.1
    traits: Annotated[list[str], Meta(description="Traits each simulated host reports.")] = (
        msgspec.field(default_factory=list)
    )
    cpu_arch: Annotated[str, Meta(description="CPU architecture simulated hosts report.")] = (
        "x86_64"
    )
    pci_devices: Annotated[
        list[str],
        Meta(description="PCI devices each simulated host has, as ALIAS:COUNT (gpu:2)."),
    ] = msgspec.field(default_factory=list)
    fail_rate: Annotated[
        float, Meta(ge=0, le=1, description="Fraction of simulated spawns that fail.")
    ] = 0.0
    fail_steps: Annotated[
        list[str],
        Meta(
            description="Driver steps that always fail on these hosts (reboot, live_migration, ...)."
        ),
    ] = msgspec.field(default_factory=list)
    step_delay: Annotated[
        float, Meta(ge=0, description="Seconds every other simulated driver step takes.")
    ] = 0.0
