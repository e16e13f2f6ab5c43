"""The services' configuration sections: conductor, scheduler, compute agents and metadata.

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
    allow_resize_to_same_host: Annotated[
        bool,
        Meta(
            description="Let a resize stay on the server's own host when its driver can "
            "resize in place (COMPUTE_SAME_HOST_COLD_MIGRATE); the scheduler may still pick "
            "another host. Off: the source is never a candidate, as Nova's default. Turn it "
            "on for one-host sites and for drivers that only resize in place (hyperv)."
        ),
    ] = False
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
    stuck_check_interval: Annotated[
        float,
        Meta(
            ge=0,
            description="Seconds between checks for servers whose task stopped moving "
            "(unchanged past scheduler_deadline + action_timeout while scheduling, twice "
            "action_timeout otherwise): a build ends in ERROR, any other task is dropped, "
            "with a fault saying since when. As Nova's instance_build_timeout, but for "
            "every task. 0: never (`hvmesh manage audit --heal` still does it).",
        ),
    ] = 60.0


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


class RestSection(Struct, kw_only=True, forbid_unknown_fields=True):
    listen: Annotated[
        str, Meta(description="Address the REST service (hvmesh rest) listens on.")
    ] = "127.0.0.1"
    port: Annotated[
        int, Meta(ge=0, le=65535, description="Its TCP port (Nova's 8774; 0: any free one).")
    ] = 8774
    token_ttl: Annotated[
        float, Meta(gt=0, le=86_400, description="Seconds an identity token stays valid.")
    ] = 3600.0
    max_tokens_per_user: Annotated[
        int,
        Meta(
            ge=1,
            le=1000,
            description="Most NATS connections one user's tokens hold in one instance; "
            "past that the least recently used is closed (opened again when its token "
            "comes back).",
        ),
    ] = 16
    token_keys: Annotated[
        list[str],
        Meta(
            description="Fernet keys tokens are sealed with (the first) and opened with "
            "(any: add a new key first, drop the old one after token_ttl). Give every "
            "instance behind one load balancer the same keys; none: each instance makes "
            "its own at start, and its tokens end with it. Keep them as secret as "
            "passwords: a token holds its user's password, sealed with them.",
        ),
    ] = msgspec.field(default_factory=list)


class ApiSection(Struct, kw_only=True, forbid_unknown_fields=True):
    max_limit: Annotated[
        int,
        Meta(
            ge=1,
            le=10_000,
            description="Most records one page of a list holds (Nova's max_limit): the "
            "default page size, and a larger limit asked for is cut to it. A page also "
            "stops at half of NATS's max payload, whatever this says.",
        ),
    ] = 1000


class ConsoleSection(Struct, kw_only=True, forbid_unknown_fields=True):
    listen: Annotated[
        str, Meta(description="Address the console proxy (hvmesh console-proxy) listens on.")
    ] = "127.0.0.1"
    port: Annotated[
        int, Meta(ge=0, le=65535, description="Its TCP port (Nova's novncproxy 6080).")
    ] = 6080
    base_url: Annotated[
        str,
        Meta(
            description="The proxy's URL as viewers reach it, which console URLs start with "
            "(Nova's novncproxy_base_url, without the page); default http://<listen>:<port>. "
            "Set it when the proxy sits behind a load balancer or TLS terminator.",
        ),
    ] = ""
    token_ttl: Annotated[
        float,
        Meta(
            gt=0,
            le=3600,
            description="Seconds a console URL's one-time token stays valid (Nova's "
            "[consoleauth] token_ttl).",
        ),
    ] = 600.0
    stall_timeout: Annotated[
        float,
        Meta(
            gt=0,
            description="A viewer that takes no console bytes for this many seconds while "
            "some wait for it is disconnected.",
        ),
    ] = 60.0
    novnc_dir: Annotated[
        str, Meta(description="noVNC's files, served for VNC consoles (Debian's novnc package).")
    ] = "/usr/share/novnc"
    xterm_dir: Annotated[
        str,
        Meta(
            description="xterm.js's package (lib/xterm.js, css/xterm.css), served for the "
            "serial console's web terminal: npm's @xterm/xterm unpacked here "
            "(tests/setup_xterm.sh does it)."
        ),
    ] = "/usr/local/share/hvmesh/xterm"

    def url(self) -> str:
        """Where viewers reach the proxy: base_url, else http://<listen>:<port>."""
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "127.0.0.1" if self.listen in ("0.0.0.0", "") else self.listen
        return f"http://{host}:{self.port}"


class SiteSection(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[
        str,
        Meta(
            pattern=r"^([A-Za-z0-9][A-Za-z0-9_-]{0,31})?\Z",
            description="This deployment's site name (its JetStream domain); empty: the core.",
        ),
    ] = ""
    availability_zones: Annotated[
        list[str],
        Meta(
            description="At a site: the zones whose creates the core hands to it (default: its name)."
        ),
    ] = []
    request_timeout: Annotated[
        float,
        Meta(
            gt=0,
            description="At the core: seconds a request for a cut-off site may wait for the "
            "link before it fails (a create's servers go to ERROR; the site will not run it).",
        ),
    ] = 3600.0
    link_check_interval: Annotated[
        float, Meta(gt=0, description="At the core: seconds between checks of each site's link.")
    ] = 2.0

    def zones(self) -> list[str]:
        return self.availability_zones or ([self.name] if self.name else [])
