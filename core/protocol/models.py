"""Every message and record hvmesh stores or sends, as msgspec Structs.

Records (flavors, images, servers, hosts) live JSON-encoded in JetStream KV buckets, so
`nats kv get` shows them readably. Request structs forbid unknown fields so the API can
answer a typo with a 400 that names the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

# --- shared field types ------------------------------------------------------------------

Name = Annotated[str, Meta(min_length=1, max_length=255)]
NonNegInt = Annotated[int, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]


def new_id() -> str:
    """A new record id (UUID4 string, as Nova uses)."""
    return str(uuid.uuid4())


def now() -> float:
    """Seconds since the epoch; every timestamp in a record uses this."""
    return time.time()


class Request(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for API request bodies: unknown fields are an error, never silently ignored."""


class Record(Struct, kw_only=True):
    """Base for stored records: tolerant of fields added by newer versions."""


# --- flavors -------------------------------------------------------------------------------


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
        CUSTOM_PCI_<ALIAS>.
        """
        out = {"VCPU": self.vcpus, "MEMORY_MB": self.ram_mb, "DISK_GB": self.disk_gb}
        out.update(custom_resources(self.extra_specs))
        return out


def pci_class(alias: str) -> str:
    """The resource class of a PCI alias: CUSTOM_PCI_ and the alias in capitals."""
    return "CUSTOM_PCI_" + "".join(c if c.isalnum() else "_" for c in alias.upper())


def parse_counts(text: str, what: str) -> dict[str, int]:
    """ "gpu:2, nic" -> {"gpu": 2, "nic": 1}; ValueError names what is wrong."""
    out: dict[str, int] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, _, count = item.partition(":")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not NAME[:COUNT]") from None
        if not name or n < 1:
            raise ValueError(f"{what}: {item!r} is not NAME[:COUNT] with COUNT >= 1")
        out[name] = out.get(name, 0) + n
    return out


def custom_resources(extra_specs: dict[str, str]) -> dict[str, int]:
    """Custom resource classes a flavor's extra specs ask for."""
    out: dict[str, int] = {}
    for key, value in extra_specs.items():
        if key.startswith("resources:CUSTOM_"):
            try:
                out[key[len("resources:") :]] = int(value)
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not a whole number") from None
        elif key == "pci_passthrough:alias":
            for alias, n in parse_counts(value, "pci_passthrough:alias").items():
                out[pci_class(alias)] = out.get(pci_class(alias), 0) + n
    return out


class FlavorCreate(Request):
    name: Name
    vcpus: PosInt
    ram_mb: PosInt
    disk_gb: NonNegInt = 0
    extra_specs: dict[str, str] = field(default_factory=dict)
    is_public: bool = True
    id: Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")] | None = (
        None
    )


# --- images ---------------------------------------------------------------------------------

DiskFormat = Literal["qcow2", "raw", "vmdk", "vhd", "vhdx", "iso", "ami", "ari", "aki"]


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
    project: str = ""
    visibility: str = "public"
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)


class ImageCreate(Request):
    name: Name
    disk_format: DiskFormat = "qcow2"
    container_format: Literal["bare", "ovf", "ova", "aki", "ari", "ami"] = "bare"
    properties: dict[str, str] = field(default_factory=dict)
    min_ram_mb: NonNegInt = 0
    min_disk_gb: NonNegInt = 0
    visibility: Literal["public", "private"] = "public"
    # Without data: an image whose bytes live elsewhere (status "active", as before
    # uploads existed), for schedulers and simulations. With `upload`: status
    # "queued" until images.upload_finish verifies the bytes.
    upload: bool = False


class ImageUploadFinish(Request):
    """The client's word on what it sent: the API checks the stored bytes against it."""

    id: Name
    size: NonNegInt
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


# --- networks, ports, keypairs ----------------------------------------------------------------


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
    created_at: float = field(default_factory=now)


Address = Annotated[str, Meta(min_length=1, max_length=64)]


class NetworkCreate(Request):
    name: Name
    cidr: Annotated[str, Meta(min_length=1, max_length=64)]
    gateway: Address | None = None  # default: the first host address; "none": no gateway
    dns_nameservers: list[Address] = field(default_factory=list)
    allocation_start: Address | None = None
    allocation_end: Address | None = None
    physical_network: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "physnet1"
    network_type: Literal["flat", "vlan"] = "flat"
    segmentation_id: Annotated[int, Meta(ge=1, le=4094)] | None = None
    mtu: Annotated[int, Meta(ge=68, le=9216)] = 1500
    shared: bool = False


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


MacAddress = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]


class PortCreate(Request):
    network: Name  # id or name
    name: Annotated[str, Meta(max_length=255)] = ""
    fixed_ip: Address | None = None
    mac: MacAddress | None = None


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


class KeypairCreate(Request):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@-][A-Za-z0-9_.@ -]{0,254}$")]
    public_key: Annotated[str, Meta(min_length=1, max_length=16384)]


# --- servers --------------------------------------------------------------------------------


class Fault(Record):
    code: int
    message: str
    details: str = ""
    created_at: float = field(default_factory=now)


class SchedulerHints(Request):
    """Nova's os:scheduler_hints that the built-in filters read."""

    same_host: list[str] = field(default_factory=list)
    different_host: list[str] = field(default_factory=list)
    group: str | None = None  # a server group id: the server joins it


GroupPolicy = Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


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


class ServerGroupCreate(Request):
    name: Name
    policy: GroupPolicy
    max_server_per_host: PosInt = 1


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
    # What the guest reads from the metadata service or its config drive.
    key_name: str | None = None
    public_key: str | None = None
    user_data: str | None = None  # base64, as the request gave it
    config_drive: bool = False
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    launched_at: float | None = None


MAX_COUNT = 1000  # most servers one create request may ask for

Count = Annotated[int, Meta(ge=1, le=MAX_COUNT)]


class ServerCreate(Request):
    name: Name
    flavor: Name
    image: Name
    availability_zone: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    scheduler_hints: SchedulerHints = field(default_factory=SchedulerHints)
    # Multi-create, as Nova's: at least min_count servers are placed or none is; up to
    # max_count (default: min_count) when there is room.
    min_count: Count = 1
    max_count: Count | None = None
    # One interface per entry, in order: a network (id or name; a port is made for it)
    # or an existing free port (by id).
    networks: list[Name] = field(default_factory=list)
    ports: list[Name] = field(default_factory=list)
    key_name: Name | None = None
    user_data: Annotated[str, Meta(max_length=200_000)] | None = None  # base64, <= 64 KiB decoded
    config_drive: bool = False


# --- server actions (hvmesh.api.servers.action) ------------------------------------------


class ActionRequest(Request, tag_field="action", kw_only=True):
    """Base of every server action body: {"id": ..., "action": <name>, ...}."""

    id: Name


class Reboot(ActionRequest, tag="reboot"):
    type: Literal["SOFT", "HARD"] = "SOFT"


class Stop(ActionRequest, tag="stop"):
    pass


class Start(ActionRequest, tag="start"):
    pass


class Pause(ActionRequest, tag="pause"):
    pass


class Unpause(ActionRequest, tag="unpause"):
    pass


class Suspend(ActionRequest, tag="suspend"):
    pass


class Resume(ActionRequest, tag="resume"):
    pass


class Rebuild(ActionRequest, tag="rebuild"):
    image: Name  # id or name


class Resize(ActionRequest, tag="resize"):
    flavor: Name  # id or name


class ConfirmResize(ActionRequest, tag="confirm-resize"):
    pass


class RevertResize(ActionRequest, tag="revert-resize"):
    pass


class Migrate(ActionRequest, tag="migrate"):
    host: Name | None = None  # admin: the target (still checked by the filters)


class LiveMigrate(ActionRequest, tag="live-migrate"):
    host: Name | None = None


class Shelve(ActionRequest, tag="shelve"):
    pass


class ShelveOffload(ActionRequest, tag="shelve-offload"):
    pass


class Unshelve(ActionRequest, tag="unshelve"):
    pass


class Evacuate(ActionRequest, tag="evacuate"):
    host: Name | None = None


class Lock(ActionRequest, tag="lock"):
    reason: Annotated[str, Meta(max_length=255)] | None = None


class Unlock(ActionRequest, tag="unlock"):
    pass


class ConsoleLog(ActionRequest, tag="console-log"):
    length: PosInt | None = None  # the last N lines; all when absent


class AttachInterface(ActionRequest, tag="attach-interface"):
    """Add an interface: a new port on `network`, or the existing free `port`."""

    network: Name | None = None
    port: Name | None = None
    fixed_ip: Address | None = None


class DetachInterface(ActionRequest, tag="detach-interface"):
    port: Name


class ResetState(ActionRequest, tag="reset-state"):
    state: Literal["active", "error"] = "error"


ServerAction = (
    Reboot
    | Stop
    | Start
    | Pause
    | Unpause
    | Suspend
    | Resume
    | Rebuild
    | Resize
    | ConfirmResize
    | RevertResize
    | Migrate
    | LiveMigrate
    | Shelve
    | ShelveOffload
    | Unshelve
    | Evacuate
    | Lock
    | Unlock
    | ConsoleLog
    | AttachInterface
    | DetachInterface
    | ResetState
)


def action_name(action: ActionRequest) -> str:
    """The action's name as the API and the action log spell it ("reboot", "confirm-resize")."""
    return str(type(action).__struct_config__.tag)


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


# --- hosts (resource providers) ---------------------------------------------------------------


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


class AggregateCreate(Request):
    name: Name
    availability_zone: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class AggregateHost(Request):
    id: str
    host: Annotated[str, Meta(min_length=1, max_length=128)]


class AggregateMetadata(Request):
    id: str
    metadata: dict[str, str | None]  # null removes a key


class Heartbeat(Record):
    host: str
    at: float
    agent_id: str


# --- scheduling -------------------------------------------------------------------------------


class RequestSpec(Record):
    """What the conductor asks the scheduler to place (Nova's RequestSpec, trimmed)."""

    server_id: str
    project: str
    flavor: Flavor
    image_properties: dict[str, str] = field(default_factory=dict)
    availability_zone: str | None = None
    scheduler_hints: SchedulerHints = field(default_factory=SchedulerHints)
    group: GroupSpec | None = None
    ignore_hosts: list[str] = field(default_factory=list)
    num_alternates: int = 2
    # A move's admin-chosen target: only this host is considered (it must still pass
    # every filter), as Nova's requested_destination.
    requested_host: str | None = None


class Selection(Record):
    """The scheduler's answer: the claimed host (None: no valid host) and alternates."""

    host: str | None
    alternates: list[str] = field(default_factory=list)
    reason: str = ""


# --- conductor tasks, agent work and events -------------------------------------------------

TaskKind = Literal["build", "delete", "action", "timer"]


class Task(Record):
    kind: TaskKind
    server_id: str
    attempt: int = 0
    # A multi-create's build: every server of the reservation, placed all or none (at
    # least min_count of them). Empty for a single server.
    server_ids: list[str] = field(default_factory=list)
    min_count: int = 1
    # kind "action": the request as the API accepted it (references already resolved).
    action: ServerAction | None = None
    # kind "timer": what to do at `not_before` (e.g. "timeout", "confirm-resize"), and
    # for a timeout, the action and the step it waits for.
    timer: str = ""
    not_before: float = 0.0
    params: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    created_at: float = field(default_factory=now)


WorkKind = str  # "spawn", "destroy", or an action's driver step ("reboot", "power_off", ...)


class Work(Record):
    """A unit of work for one agent, on hvmesh.work.<host>."""

    kind: WorkKind
    server_id: str
    host: str
    attempt: int = 0
    server: Server | None = None
    image: Image | None = None
    vif: Vif | None = None  # attach_interface / detach_interface: the interface
    request_id: str = ""
    # The server action this step belongs to ("" for builds and deletes).
    action: str = ""
    # Step arguments: reboot type, the other host of a move, ...
    params: dict[str, str] = field(default_factory=dict)


class AgentEvent(Record):
    """What an agent reports back on hvmesh.events.<host>.<server>."""

    kind: str  # "spawn", "destroy", "power"
    server_id: str
    host: str
    ok: bool = True
    attempt: int = 0
    power_state: int | None = None
    message: str = ""
    request_id: str = ""
    action: str = ""
    started_at: float = field(default_factory=now)
    at: float = field(default_factory=now)


# --- wire helpers -----------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    """JSON-encode a Struct (or plain data) for the wire or a KV value."""
    return _encoder.encode(obj)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
