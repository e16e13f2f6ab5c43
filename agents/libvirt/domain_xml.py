"""Domain XML: what a server (flavor, image properties, interfaces) looks like to libvirt.

A pure function of its inputs: `domain_xml(spec, cfg)` reads no host state, so it is
tested on its own and its output checked against libvirt's schema. What the host
decides (the root disk's path, the kernel files, the PCI devices picked) comes in the
DomainSpec.

From the flavor: vCPUs, memory, CPU topology (hw:cpu_sockets, hw:cpu_cores,
hw:cpu_threads). From the image properties: machine type (hw_machine_type), disk bus
(hw_disk_bus), NIC model (hw_vif_model) and, for direct kernel boot, the command line
(os_command_line). From [libvirt]: domain type (virt_type), CPU mode and model, and the
VNC server of the graphical console (vnc_enabled, vnc_server_listen).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec

from hvmesh.agents.driver import DriverError
from hvmesh.agents.libvirt.interfaces import interface_element, nic_model
from hvmesh.agents.libvirt.pci import PciAddress
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Flavor, Server

#: Names of the domains this driver manages: the prefix and the server id.
NAME_PREFIX = "hvmesh-"
#: Namespace of the <metadata> element naming the server, flavor and image.
METADATA_NS = "urn:hvmesh:libvirt:instance:1"
VIRT_TYPES = ("kvm", "qemu")
CPU_MODES = ("host-model", "host-passthrough", "custom", "none")
DISK_BUSES = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
DEFAULT_CMDLINE = "console=ttyS0"


def domain_name(server_id: str) -> str:
    return NAME_PREFIX + server_id


def server_id_of(name: str) -> str | None:
    """The server id a domain name stands for; None for a domain this driver does not own."""
    return name[len(NAME_PREFIX) :] if name.startswith(NAME_PREFIX) else None


class DomainSpec(msgspec.Struct, kw_only=True):
    """Everything a domain's XML is made of besides the configuration."""

    server: Server
    #: The flavor to build for (the server's own unless resizing).
    flavor: Flavor
    image_properties: dict[str, str] = msgspec.field(default_factory=dict)
    arch: str = "x86_64"
    root_disk: Path
    root_format: str = "qcow2"
    console_log: Path
    kernel: Path | None = None
    initrd: Path | None = None
    config_drive: Path | None = None
    hostdevs: list[PciAddress] = msgspec.field(default_factory=list)


def cpu_topology(flavor: Flavor) -> tuple[int, int, int] | None:
    """(sockets, cores, threads) from the flavor's extra specs; None if it sets none.

    Unset parts default to 1 thread, 1 core per socket, and sockets to fill the vCPUs;
    their product must be the flavor's vCPU count.
    """
    specs = flavor.extra_specs
    keys = ("hw:cpu_sockets", "hw:cpu_cores", "hw:cpu_threads")
    if not any(k in specs for k in keys):
        return None
    values: dict[str, int] = {}
    for key in keys:
        if key in specs:
            try:
                values[key] = int(specs[key])
            except ValueError:
                raise DriverError(
                    f"flavor {flavor.name}: {key}={specs[key]!r} is not a number"
                ) from None
            if values[key] < 1:
                raise DriverError(f"flavor {flavor.name}: {key} must be at least 1")
    threads = values.get("hw:cpu_threads", 1)
    cores = values.get("hw:cpu_cores", 1)
    sockets = values.get("hw:cpu_sockets", max(flavor.vcpus // (cores * threads), 1))
    if sockets * cores * threads != flavor.vcpus:
        raise DriverError(
            f"flavor {flavor.name}: {sockets} sockets x {cores} cores x {threads} threads "
            f"is not its {flavor.vcpus} vCPUs"
        )
    return sockets, cores, threads


def cpu_mode(cfg: Config) -> str:
    mode = cfg.libvirt.cpu_mode or ("host-model" if cfg.libvirt.virt_type == "kvm" else "none")
    if mode not in CPU_MODES:
        raise DriverError(f"[libvirt] cpu_mode={mode!r} is not one of {CPU_MODES}")
    if mode == "custom" and not cfg.libvirt.cpu_model:
        raise DriverError("[libvirt] cpu_mode=custom needs a cpu_model")
    return mode


def _cpu(root: ET.Element, flavor: Flavor, cfg: Config) -> None:
    mode = cpu_mode(cfg)
    topology = cpu_topology(flavor)
    if mode == "none" and topology is None:
        return
    cpu = ET.SubElement(root, "cpu")
    if mode == "custom":
        cpu.set("mode", "custom")
        cpu.set("match", "exact")
        ET.SubElement(cpu, "model", fallback="allow").text = cfg.libvirt.cpu_model
    elif mode != "none":
        cpu.set("mode", mode)
    if topology is not None:
        sockets, cores, threads = topology
        ET.SubElement(cpu, "topology", sockets=str(sockets), cores=str(cores), threads=str(threads))


def _metadata(root: ET.Element, spec: DomainSpec) -> None:
    meta = ET.SubElement(root, "metadata")
    inst = ET.SubElement(meta, "hvmesh:instance", {"xmlns:hvmesh": METADATA_NS})
    s = spec.server
    ET.SubElement(inst, "hvmesh:server", id=s.id, name=s.name)
    ET.SubElement(inst, "hvmesh:owner", project=s.project, user=s.user)
    f = spec.flavor
    ET.SubElement(
        inst,
        "hvmesh:flavor",
        id=f.id,
        name=f.name,
        vcpus=str(f.vcpus),
        ram_mb=str(f.ram_mb),
        disk_gb=str(f.disk_gb),
    )
    ET.SubElement(inst, "hvmesh:image", id=s.image_id, name=s.image_name)


def _os(root: ET.Element, spec: DomainSpec) -> None:
    props = spec.image_properties
    os_el = ET.SubElement(root, "os")
    os_type = ET.SubElement(os_el, "type", arch=spec.arch)
    if props.get("hw_machine_type"):
        os_type.set("machine", props["hw_machine_type"])
    os_type.text = "hvm"
    if spec.kernel is not None:
        ET.SubElement(os_el, "kernel").text = str(spec.kernel)
        if spec.initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(spec.initrd)
        ET.SubElement(os_el, "cmdline").text = props.get("os_command_line", DEFAULT_CMDLINE)
    else:
        ET.SubElement(os_el, "boot", dev="hd")


def _disks(devices: ET.Element, spec: DomainSpec) -> None:
    props = spec.image_properties
    bus = props.get("hw_disk_bus", "virtio")
    if bus not in DISK_BUSES:
        raise DriverError(f"image property hw_disk_bus={bus!r} is not one of {tuple(DISK_BUSES)}")
    if bus == "scsi":
        ET.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=spec.root_format, cache="none")
    ET.SubElement(disk, "source", file=str(spec.root_disk))
    ET.SubElement(disk, "target", dev=DISK_BUSES[bus] + "a", bus=bus)
    if spec.config_drive is not None:
        q35 = "q35" in props.get("hw_machine_type", "")
        cd_bus = bus if bus in ("scsi", "sata") else ("sata" if q35 else "ide")
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", file=str(spec.config_drive))
        # The second unit on its bus: hdb (IDE) or sdb, after a SCSI or SATA root disk.
        dev = "hdb" if cd_bus == "ide" else "sdb"
        ET.SubElement(cdrom, "target", dev=dev, bus=cd_bus)
        ET.SubElement(cdrom, "readonly")


def _hostdevs(devices: ET.Element, spec: DomainSpec) -> None:
    for dev in spec.hostdevs:
        hostdev = ET.SubElement(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        source = ET.SubElement(hostdev, "source")
        ET.SubElement(
            source,
            "address",
            domain=f"0x{dev.domain:04x}",
            bus=f"0x{dev.bus:02x}",
            slot=f"0x{dev.slot:02x}",
            function=f"0x{dev.function:x}",
        )


def _console(devices: ET.Element, spec: DomainSpec) -> None:
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(spec.console_log), append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")


def _graphics(devices: ET.Element, cfg: Config) -> None:
    """A VNC server on [libvirt] vnc_server_listen, its port picked when the guest starts,
    and the VGA card it shows."""
    if not cfg.libvirt.vnc_enabled:
        return
    ET.SubElement(
        devices, "graphics", type="vnc", autoport="yes", listen=cfg.libvirt.vnc_server_listen
    )
    video = ET.SubElement(devices, "video")
    ET.SubElement(video, "model", type="vga")


def domain_xml(spec: DomainSpec, cfg: Config) -> str:
    """The domain XML of `spec`; DriverError names a bad flavor spec, image property or
    option."""
    virt_type = cfg.libvirt.virt_type
    if virt_type not in VIRT_TYPES:
        raise DriverError(f"[libvirt] virt_type={virt_type!r} is not one of {VIRT_TYPES}")
    flavor = spec.flavor
    if flavor.vcpus < 1 or flavor.ram_mb < 1:
        raise DriverError(f"flavor {flavor.name}: vcpus and ram_mb must be at least 1")
    root = ET.Element("domain", type=virt_type)
    ET.SubElement(root, "name").text = domain_name(spec.server.id)
    ET.SubElement(root, "uuid").text = spec.server.id
    ET.SubElement(root, "title").text = spec.server.name
    _metadata(root, spec)
    ET.SubElement(root, "memory", unit="MiB").text = str(flavor.ram_mb)
    ET.SubElement(root, "vcpu").text = str(flavor.vcpus)
    _os(root, spec)
    features = ET.SubElement(root, "features")
    if spec.arch in ("x86_64", "i686"):
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
    _cpu(root, flavor, cfg)
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "destroy"
    devices = ET.SubElement(root, "devices")
    _disks(devices, spec)
    model = nic_model(spec.image_properties)
    for vif in spec.server.network_info:
        devices.append(interface_element(vif, cfg, model))
    _console(devices, spec)
    _graphics(devices, cfg)
    _hostdevs(devices, spec)
    ET.SubElement(devices, "memballoon", model="virtio")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")
