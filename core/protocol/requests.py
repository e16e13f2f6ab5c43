"""The bodies of API requests that create or change records; unknown fields are refused."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, field

from hvmesh.core.protocol.base import DiskFormat, GroupPolicy, Name, NonNegInt, PosInt, Request
from hvmesh.core.protocol.limits import (
    MAX_COUNT,
    MAX_DNS_NAMESERVERS,
    Metadata,
    MetadataUpdate,
    Nics,
    UserDataText,
)
from hvmesh.core.protocol.records import SchedulerHints

# Dot-separated words, as a KV key must be (no leading, trailing or doubled dot).
FlavorId = Annotated[
    str, Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
]


class FlavorCreate(Request):
    name: Name
    vcpus: PosInt
    ram_mb: PosInt
    disk_gb: NonNegInt = 0
    extra_specs: Metadata = field(default_factory=dict)
    is_public: bool = True
    id: FlavorId | None = None


class FlavorExtraSpecs(Request):
    """Extra specs set (a string) or removed (null) on a flavor; servers built from it
    keep the flavor they were built with."""

    id: Name  # id or name
    extra_specs: MetadataUpdate


class ImageCreate(Request):
    name: Name
    disk_format: DiskFormat = "qcow2"
    container_format: Literal["bare", "ovf", "ova", "aki", "ari", "ami"] = "bare"
    properties: Metadata = field(default_factory=dict)
    min_ram_mb: NonNegInt = 0
    min_disk_gb: NonNegInt = 0
    visibility: Literal["public", "private"] = "public"
    # Without data: an image whose bytes live elsewhere (status "active", as before
    # uploads existed), for schedulers and simulations. With `upload`: status
    # "queued" until images.upload_finish verifies the bytes.
    upload: bool = False


class ImageUpdate(Request):
    """An image's name, visibility, minimums and properties (null removes one); its
    formats only while it has no data yet (queued)."""

    id: Name
    name: Name | None = None
    visibility: Literal["public", "private"] | None = None
    min_ram_mb: NonNegInt | None = None
    min_disk_gb: NonNegInt | None = None
    disk_format: DiskFormat | None = None
    container_format: Literal["bare", "ovf", "ova", "aki", "ari", "ami"] | None = None
    properties: MetadataUpdate = field(default_factory=dict)


class ServiceSet(Request):
    """A compute service (a host) enabled or disabled for new servers, as Nova's
    os-services; a disabled host keeps its servers and is skipped by the scheduler."""

    host: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,128}\Z")]
    status: Literal["enabled", "disabled"]
    disabled_reason: Annotated[str, Meta(max_length=255)] | None = None


class ImageUploadFinish(Request):
    """The client's word on what it sent: the API checks the stored bytes against it."""

    id: Name
    size: NonNegInt
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]


Address = Annotated[str, Meta(min_length=1, max_length=64)]
Uuid = Annotated[
    str, Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
]


class NetworkCreate(Request):
    name: Name
    cidr: Annotated[str, Meta(min_length=1, max_length=64)]
    gateway: Address | None = None  # default: the first host address; "none": no gateway
    dns_nameservers: Annotated[list[Address], Meta(max_length=MAX_DNS_NAMESERVERS)] = field(
        default_factory=list
    )
    allocation_start: Address | None = None
    allocation_end: Address | None = None
    physical_network: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")] = "physnet1"
    network_type: Literal["flat", "vlan"] = "flat"
    segmentation_id: Annotated[int, Meta(ge=1, le=4094)] | None = None
    mtu: Annotated[int, Meta(ge=68, le=9216)] = 1500
    shared: bool = False
    # The id to give the network (default: a new one); the REST API's network keeps the
    # id it was announced under before its subnet made it an hvmesh network.
    id: Uuid | None = None


MacAddress = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")]


class PortCreate(Request):
    network: Name  # id or name
    name: Annotated[str, Meta(max_length=255)] = ""
    fixed_ip: Address | None = None
    mac: MacAddress | None = None


class KeypairCreate(Request):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@-][A-Za-z0-9_.@ -]{0,254}\Z")]
    public_key: Annotated[str, Meta(min_length=1, max_length=16384)]


class ServerGroupCreate(Request):
    name: Name
    policy: GroupPolicy
    max_server_per_host: PosInt = 1


Count = Annotated[int, Meta(ge=1, le=MAX_COUNT)]


class ServerCreate(Request):
    name: Name
    flavor: Name
    image: Name
    availability_zone: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    metadata: Metadata = field(default_factory=dict)
    scheduler_hints: SchedulerHints = field(default_factory=SchedulerHints)
    # Multi-create, as Nova's: at least min_count servers are placed or none is; up to
    # max_count (default: min_count) when there is room.
    min_count: Count = 1
    max_count: Count | None = None
    # One interface per entry, in order: a network (id or name; a port is made for it)
    # or an existing free port (by id).
    networks: Nics = field(default_factory=list)
    ports: Nics = field(default_factory=list)
    key_name: Name | None = None
    user_data: UserDataText | None = None  # base64, at most MAX_USER_DATA_BYTES decoded
    config_drive: bool = False
    # API 1.1: a retry with the same token returns the server the first request made.
    client_token: Annotated[str, Meta(min_length=1, max_length=255)] | None = None


class ServerUpdate(Request):
    """A server's name and metadata, as Nova's PUT /servers/{id} and its metadata API."""

    id: Name
    name: Name | None = None
    metadata: MetadataUpdate = field(default_factory=dict)  # null removes a key
    replace_metadata: bool = False  # the metadata given becomes the whole set


class AggregateCreate(Request):
    name: Name
    availability_zone: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    metadata: Metadata = field(default_factory=dict)


class AggregateHost(Request):
    id: Name
    host: Annotated[str, Meta(min_length=1, max_length=128)]


class AggregateMetadata(Request):
    id: Name
    metadata: MetadataUpdate  # null removes a key
