"""The records hvmesh stores in JetStream KV buckets, JSON-encoded so `nats kv get` reads them."""

from __future__ import annotations

from typing import Literal

from msgspec import field

from hvmesh.core.protocol.base import Record, Request, now
from hvmesh.core.protocol.limits import HintServers, NameText
from hvmesh.core.protocol.resources import custom_resources, standard_overrides


class Flavor(Record):
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    extra_specs: dict[str, str] = field(default_factory=dict)
    is_public: bool = True
    created_at: float = field(default_factory=now)

    def resources(self) -> dict[str, int]:
        """The placement resources one server of this flavor consumes.

        Besides VCPU, MEMORY_MB and DISK_GB: `resources:CUSTOM_X=N` extra specs, and PCI
        devices from `pci_passthrough:alias` ("gpu:2,nic:1"), each alias a resource class
        CUSTOM_PCI_<ALIAS>. `resources:VCPU=0` (MEMORY_MB, DISK_GB) replaces the flavor's
        own amount, as Nova's bare-metal flavors ask for none of them.
        """
        out = {"VCPU": self.vcpus, "MEMORY_MB": self.ram_mb, "DISK_GB": self.disk_gb}
        out.update(standard_overrides(self.extra_specs))
        out.update(custom_resources(self.extra_specs))
        return out


class Image(Record):
    """An image's metadata. Its bytes live in the JetStream object store `image_data`
    under the image id, once uploaded (status "active"); `checksum` is their sha256 (hex).

    Properties are Glance's: `hw_machine_type`, `hw_disk_bus`, `hw_vif_model`,
    `os_distro`, `kernel_id`/`ramdisk_id` (images holding a kernel and an initrd for
    direct boot), `hw_architecture`, `img_hv_type`, ... The scheduler's
    ImagePropertiesFilter and the drivers read them.
    """

    id: str
    name: str
    disk_format: str
    container_format: str = "bare"
    status: str = "active"
    properties: dict[str, str] = field(default_factory=dict)
    min_ram_mb: int = 0
    min_disk_gb: int = 0
    size: int | None = None
    checksum: str | None = None  # sha256 of the bytes, hex
    uploaded: int = 0  # bytes received so far while "saving"
    upload_attempt: int = 0  # one more each time an upload is discarded (names its chunks)
    project: str = ""
    visibility: str = "public"
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)


class Network(Record):
    """A network (Neutron's network and its one IPv4 subnet) and its address allocations.

    `ips` maps every allocated address to its port: IPAM is a compare-and-set write of
    this one record, so two ports can never get the same address.
    """

    id: str
    name: str
    project: str
    cidr: str
    gateway: str | None
    dns_nameservers: list[str] = field(default_factory=list)
    allocation_start: str = ""  # first address handed out (first host after the gateway)
    allocation_end: str = ""  # last address handed out (last host)
    physical_network: str = "physnet1"
    network_type: str = "flat"  # "flat" or "vlan"
    segmentation_id: int | None = None  # the VLAN id of a "vlan" network
    mtu: int = 1500
    shared: bool = False
    dhcp: bool = False  # hvmesh serves addresses through metadata and config drive
    ips: dict[str, str] = field(default_factory=dict)  # address -> port id
    # Addresses taken for a port not written yet: address -> when. A crash before the
    # port is written leaves one here, and it is free again once older than a grace.
    pending: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=now)


class Port(Record):
    """A port: one address and MAC on one network, bound to a server or free."""

    id: str
    name: str
    network_id: str
    project: str
    mac: str
    ip: str
    server_id: str | None = None  # Neutron's device_id
    # Made by hvmesh for a server's --network, so deleted with it (Nova's auto-created
    # ports); a port the user made and passed with --port is only unbound.
    auto_delete: bool = False
    status: str = "DOWN"  # "ACTIVE" while bound to a running server's interface
    created_at: float = field(default_factory=now)


class Vif(Record):
    """One of a server's interfaces as a driver needs it (Nova's network_info VIF)."""

    port_id: str
    network_id: str
    network_name: str
    mac: str
    ip: str
    cidr: str
    gateway: str | None = None
    dns_nameservers: list[str] = field(default_factory=list)
    physical_network: str = "physnet1"
    network_type: str = "flat"
    segmentation_id: int | None = None
    mtu: int = 1500


class Keypair(Record):
    """An SSH public key a user imports; servers created with its name carry the key."""

    id: str
    name: str
    project: str
    user: str
    public_key: str
    fingerprint: str
    type: str = "ssh"
    created_at: float = field(default_factory=now)


class Fault(Record):
    code: int
    message: str
    details: str = ""
    created_at: float = field(default_factory=now)


class SchedulerHints(Request):
    """Nova's os:scheduler_hints that the built-in filters read."""

    same_host: HintServers = field(default_factory=list)
    different_host: HintServers = field(default_factory=list)
    group: NameText | None = None  # a server group id: the server joins it


class ServerGroup(Record):
    """Nova's server group: servers placed together or apart, by policy."""

    id: str
    name: str
    project: str
    user: str
    policy: str
    max_server_per_host: int = 1  # anti-affinity's rule
    members: list[str] = field(default_factory=list)
    # Where members were placed: written by compare-and-set right after each claim, with
    # the policy checked against the others, so two members scheduled at once cannot
    # both break it.
    placements: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=now)


class GroupSpec(Record):
    """What the scheduler needs of a server's group: its policy, where the others are."""

    id: str
    policy: str
    member_hosts: list[str] = field(default_factory=list)  # one entry per placed member
    max_server_per_host: int = 1


class Migration(Record):
    """A server's move in progress (resize, cold or live migration, evacuation).

    While it runs, the source host's allocation is held under the migration's id (as
    Nova's migration consumer) and the destination's under the server's id, so both can
    live on one host (a resize to the same host) and the audit can tell them apart.
    """

    id: str
    kind: Literal["resize", "migration", "live-migration", "evacuation"]
    source_host: str
    dest_host: str | None = None
    old_flavor: Flavor | None = None
    new_flavor: Flavor | None = None
    old_vm_state: str = "active"
    status: str = "pre-migrating"
    created_at: float = field(default_factory=now)


class Server(Record):
    id: str
    name: str
    project: str
    user: str
    flavor: Flavor
    image_id: str
    image_name: str
    availability_zone: str | None = None
    vm_state: str = "building"
    task_state: str | None = "scheduling"
    power_state: int = 0
    host: str | None = None
    fault: Fault | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    image_properties: dict[str, str] = field(default_factory=dict)
    scheduler_hints: SchedulerHints = field(default_factory=SchedulerHints)
    # Servers created by one request (multi-create) share a reservation id, as in Nova.
    reservation_id: str = ""
    # Build bookkeeping: which attempt this is, which hosts already failed it, and the
    # scheduler's alternates, tried in order on a reschedule before asking it again.
    attempt: int = 0
    retry_hosts: list[str] = field(default_factory=list)
    alternates: list[str] = field(default_factory=list)
    # The action running now (its request id, as in the action log) and a move's state.
    request_id: str | None = None
    migration: Migration | None = None
    # lock/unlock: who locked it ("owner" or "admin", as Nova's locked_by), the user, why.
    locked_by: str | None = None
    locker: str | None = None
    locked_reason: str | None = None
    # Networking: the server's interfaces, in order (eth0, eth1, ...).
    network_info: list[Vif] = field(default_factory=list)
    # The port an attach-interface or detach-interface in progress is about.
    pending_port: str | None = None
    # The image a create-image in progress makes.
    pending_image: str | None = None
    # What the guest reads from the metadata service or its config drive.
    key_name: str | None = None
    public_key: str | None = None
    user_data: str | None = None  # base64, as the request gave it
    config_drive: bool = False
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    launched_at: float | None = None


class ActionEvent(Record):
    """One step of an action, as Nova's instance action events."""

    event: str  # e.g. "conductor_resize", "compute_reboot"
    host: str | None = None
    start_time: float = field(default_factory=now)
    finish_time: float | None = None
    result: str | None = None  # "Success" or "Error"
    details: str = ""


class InstanceAction(Record):
    """What was done to a server, by whom, when (Nova's instance action log)."""

    server_id: str
    request_id: str
    action: str
    project: str
    user: str
    start_time: float = field(default_factory=now)
    finish_time: float | None = None
    message: str | None = None  # "Error" when it failed, as Nova's
    events: list[ActionEvent] = field(default_factory=list)


class Inventory(Record):
    """One resource class on one host, as Placement's inventory record."""

    total: int
    reserved: int = 0
    min_unit: int = 1
    max_unit: int | None = None
    step_size: int = 1
    allocation_ratio: float = 1.0

    def capacity(self) -> int:
        """What may be allocated in all: (total - reserved) x ratio, rounded down."""
        return int((self.total - self.reserved) * self.allocation_ratio)


class Host(Record):
    """A hypervisor host: inventory, status and the allocations claimed against it.

    Claims are compare-and-set writes of this one record, so its allocations can never
    disagree with its inventory.
    """

    name: str
    driver: str
    availability_zone: str = "nova"
    status: str = "enabled"
    disabled_reason: str | None = None
    inventories: dict[str, Inventory] = field(default_factory=dict)
    traits: list[str] = field(default_factory=list)
    aggregates: list[str] = field(default_factory=list)
    allocations: dict[str, dict[str, int]] = field(default_factory=dict)
    hypervisor_type: str = ""
    hypervisor_version: str = ""
    cpu_arch: str = ""
    failed_builds: int = 0  # spawns failed here since the last one that worked
    # Builds claimed here and not yet finished: Nova's "io_ops", as server ids so that
    # a repeated finish removes nothing twice.
    in_progress: list[str] = field(default_factory=list)
    # The key of the heartbeat record that speaks for this host ("": the host's name).
    beat_key: str = ""
    # The group whose consumer takes this host's work (hvmesh.work.<group>.<host>); "":
    # the host's own (hvmesh.work.<host>).
    work_group: str = ""
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)

    def used(self, rc: str) -> int:
        return sum(a.get(rc, 0) for a in self.allocations.values())

    def fits(self, resources: dict[str, int]) -> str | None:
        """None if `resources` fit beside the current allocations, else why not."""
        for rc, amount in resources.items():
            if amount <= 0:
                continue
            inv = self.inventories.get(rc)
            if inv is None:
                return f"{rc}: no inventory"
            if inv.max_unit is not None and amount > inv.max_unit:
                return f"{rc}: {amount} exceeds max_unit {inv.max_unit}"
            if amount < inv.min_unit:
                return f"{rc}: {amount} below min_unit {inv.min_unit}"
            if self.used(rc) + amount > inv.capacity():
                return f"{rc}: {self.used(rc)} used + {amount} requested > {inv.capacity()}"
        return None


class Aggregate(Record):
    """A host aggregate: a named set of hosts with metadata (Nova's aggregates).

    Metadata `availability_zone` makes it an availability zone: its hosts are in that
    zone whatever they report. `filter_tenant_id` (comma-separated projects) isolates its
    hosts for those projects (AggregateMultiTenancyIsolation).
    """

    id: str
    name: str
    metadata: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=now)

    @property
    def availability_zone(self) -> str | None:
        return self.metadata.get("availability_zone")


class Heartbeat(Record):
    """That hosts are up (key: the host, or the first host of a group).

    An agent process running many hosts writes one record per group of them
    (agents/heartbeats.py): `hosts` those that beat at `at`, `stale` the last beat of
    those whose hypervisor is unreachable now. A record without `hosts` is one host's.
    """

    host: str
    at: float
    agent_id: str
    hosts: list[str] | None = None
    stale: dict[str, float] = field(default_factory=dict)

    def beats(self) -> dict[str, float]:
        """Each host this record speaks for, with the time of its last beat."""
        if self.hosts is None:
            return {self.host: self.at}
        return dict.fromkeys(self.hosts, self.at) | self.stale


class PlacementLease(Record):
    """Where one scheduling request's claim landed (key: the request's claim_key).

    Written once, after the claim: a retried or stale copy of the request finds it and
    answers with that host, or with nothing if the claim there was given back since.
    """

    server_id: str
    host: str
    alternates: list[str] = field(default_factory=list)
    at: float = field(default_factory=now)


class NameClaim(Record):
    """A unique name's holder (a flavor, an aggregate, a user's keypair): taken by
    compare-and-set before the record is written, given up after it is deleted."""

    kind: str
    name: str
    owner: str  # the id of the record holding the name
    token: str = ""  # the create that took it, told apart from another with the same id
    at: float = field(default_factory=now)
