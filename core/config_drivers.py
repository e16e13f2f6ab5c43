"""The hypervisor drivers' configuration sections: [libvirt], [vmware], [hyperv], [ironic] and [fake].

core/config.py assembles them with the other sections into one Config.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct


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
    vnc_enabled: Annotated[
        bool,
        Meta(
            description="Give each guest a VNC server for its graphical console (Nova's "
            "[vnc] enabled)."
        ),
    ] = True
    vnc_server_listen: Annotated[
        str,
        Meta(
            description="Address the guests' VNC servers listen on; only the host's agent "
            "connects to it (Nova's [vnc] server_listen)."
        ),
    ] = "127.0.0.1"


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


class HypervSection(Struct, kw_only=True, forbid_unknown_fields=True):
    host: Annotated[str, Meta(description="Hyper-V host the agent manages over WinRM.")] = ""
    port: Annotated[int, Meta(ge=1, le=65535, description="Its WinRM port (HTTPS: 5986).")] = 5986
    scheme: Annotated[str, Meta(pattern="^https?$", description="https, or http (labs).")] = "https"
    transport: Annotated[
        str,
        Meta(
            pattern="^(ntlm|kerberos|basic|credssp|certificate)$",
            description="WinRM authentication: ntlm, kerberos, basic, credssp or certificate.",
        ),
    ] = "ntlm"
    username: Annotated[str, Meta(description="Account the agent runs cmdlets as.")] = ""
    password: Annotated[str, Meta(description="That account's password.")] = ""
    ca_file: Annotated[str, Meta(description="PEM CA of the listener's certificate.")] = ""
    insecure: Annotated[bool, Meta(description="Skip TLS verification (labs only).")] = False
    vhd_path: Annotated[
        str, Meta(description="Folder on the host holding each instance's disks.")
    ] = r"C:\ProgramData\hvmesh\Instances"
    image_cache_path: Annotated[
        str, Meta(description="Folder on the host where images are copied once, by checksum.")
    ] = r"C:\ProgramData\hvmesh\Images"
    switch: Annotated[
        str, Meta(description="Virtual switch of networks physical_network_mappings lacks.")
    ] = ""
    generation: Annotated[int, Meta(ge=1, le=2, description="VM generation: 1 BIOS, 2 UEFI.")] = 2
    operation_timeout: Annotated[
        int, Meta(ge=1, description="Seconds one WS-Management request may wait on the host.")
    ] = 20
    command_timeout: Annotated[
        float, Meta(gt=0, description="Seconds one PowerShell command may run, then stopped.")
    ] = 300.0
    upload_chunk: Annotated[
        int, Meta(ge=512, le=6144, description="Image bytes sent in one command on upload.")
    ] = 6144
    connection_retries: Annotated[
        int, Meta(ge=0, description="Times the first connection is retried before the agent fails.")
    ] = 3
    connection_backoff: Annotated[
        float, Meta(gt=0, description="Seconds before a reconnect; doubling, up to 30 s.")
    ] = 1.0
    power_poll_interval: Annotated[
        float, Meta(gt=0, description="Seconds between two Get-VM polls for power changes.")
    ] = 5.0


class IronicSection(Struct, kw_only=True, forbid_unknown_fields=True):
    api_url: Annotated[
        str,
        Meta(description="Ironic API endpoint (http://ironic:6385); with keystone: the catalog's."),
    ] = ""
    auth_type: Annotated[
        Literal["none", "http_basic", "keystone"],
        Meta(description="none (noauth), http_basic, or keystone (the clouds.yaml `cloud`)."),
    ] = "none"
    username: Annotated[str, Meta(description="http_basic user.")] = ""
    password: Annotated[str, Meta(description="That user's password.")] = ""
    cloud: Annotated[str, Meta(description="clouds.yaml cloud name, for auth_type keystone.")] = ""
    conductor_group: Annotated[
        str,
        Meta(description="Manage only the nodes of this conductor group (default: every node)."),
    ] = ""
    poll_interval: Annotated[
        float, Meta(gt=0, description="Seconds between two reads of a node being provisioned.")
    ] = 2.0
    deploy_timeout: Annotated[
        float, Meta(gt=0, description="Seconds a deploy (or undeploy) may take before it fails.")
    ] = 3600.0
    ca_file: Annotated[str, Meta(description="PEM CA of Ironic's TLS certificate.")] = ""
    insecure: Annotated[bool, Meta(description="Skip TLS verification (labs only).")] = False


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
