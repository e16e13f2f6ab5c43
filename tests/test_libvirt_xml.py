"""Domain XML of the libvirt driver: what flavors, images and interfaces become, checked
against libvirt's own schema with virt-xml-validate."""

from __future__ import annotations

import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hvmesh.agents.driver import DriverError
from hvmesh.agents.libvirt.domain_xml import (
    METADATA_NS,
    DomainSpec,
    cpu_topology,
    domain_name,
    domain_xml,
    server_id_of,
)
from hvmesh.agents.libvirt.pci import PciAddress
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Flavor, Server, Vif


def config(**libvirt: str) -> Config:
    cfg = Config()
    cfg.compute.physical_network_mappings = ["physnet1:br0", "physnet2:br-ext"]
    cfg.libvirt.virt_type = "qemu"
    for key, value in libvirt.items():
        setattr(cfg.libvirt, key, value)
    return cfg


def vif(n: int, **kw: object) -> Vif:
    return Vif(
        port_id=f"port-{n}",
        network_id="net",
        network_name="net",
        mac=f"fa:16:3e:00:00:0{n}",
        ip=f"10.0.0.{n + 10}",
        cidr="10.0.0.0/24",
        **kw,  # type: ignore[arg-type]
    )


def server(vifs: list[Vif] | None = None, **specs: str) -> Server:
    flavor = Flavor(id="f1", name="m1.small", vcpus=4, ram_mb=2048, disk_gb=10, extra_specs=specs)
    return Server(
        id=str(uuid.uuid4()),
        name="web-1",
        project="demo",
        user="alice",
        flavor=flavor,
        image_id="img-1",
        image_name="cirros",
        network_info=vifs if vifs is not None else [vif(1)],
    )


def spec(s: Server, tmp: Path, **kw: object) -> DomainSpec:
    return DomainSpec(
        server=s,
        flavor=s.flavor,
        root_disk=tmp / "disk.qcow2",
        console_log=tmp / "console.log",
        **kw,  # type: ignore[arg-type]
    )


def validate(xml: str, tmp: Path) -> None:
    path = tmp / f"domain-{uuid.uuid4().hex[:8]}.xml"
    path.write_text(xml)
    done = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{xml}"


needs_validator = pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None, reason="virt-xml-validate (libvirt-clients)"
)


def test_basic_domain(tmp_path: Path) -> None:
    s = server()
    root = ET.fromstring(domain_xml(spec(s, tmp_path), config()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == domain_name(s.id) and server_id_of(domain_name(s.id)) == s.id
    assert root.findtext("uuid") == s.id
    assert root.findtext("vcpu") == "4"
    assert root.find("memory").text == "2048" and root.find("memory").get("unit") == "MiB"
    assert root.find("cpu") is None  # qemu: no host CPU model unless configured
    disk = root.find("devices/disk[@device='disk']")
    assert disk.find("target").get("bus") == "virtio" and disk.find("target").get("dev") == "vda"
    assert disk.find("source").get("file") == str(tmp_path / "disk.qcow2")
    iface = root.find("devices/interface")
    assert iface.find("source").get("bridge") == "br0"
    assert iface.find("mac").get("address") == "fa:16:3e:00:00:01"
    assert iface.find("model").get("type") == "virtio"
    assert root.find("devices/serial/log").get("file") == str(tmp_path / "console.log")
    meta = root.find(f"metadata/{{{METADATA_NS}}}instance")
    assert meta.find(f"{{{METADATA_NS}}}flavor").get("name") == "m1.small"
    assert meta.find(f"{{{METADATA_NS}}}image").get("id") == "img-1"
    assert root.find("os/boot").get("dev") == "hd"


def test_image_properties_and_topology(tmp_path: Path) -> None:
    s = server(**{"hw:cpu_sockets": "2", "hw:cpu_cores": "2"})
    props = {"hw_machine_type": "q35", "hw_disk_bus": "sata", "hw_vif_model": "e1000"}
    cfg = config(virt_type="kvm")
    root = ET.fromstring(domain_xml(spec(s, tmp_path, image_properties=props), cfg))
    assert root.get("type") == "kvm"
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("cpu").get("mode") == "host-model"  # kvm's default
    topo = root.find("cpu/topology")
    assert (topo.get("sockets"), topo.get("cores"), topo.get("threads")) == ("2", "2", "1")
    assert root.find("devices/disk/target").attrib == {"dev": "sda", "bus": "sata"}
    assert root.find("devices/interface/model").get("type") == "e1000"


def test_custom_cpu_model(tmp_path: Path) -> None:
    root = ET.fromstring(
        domain_xml(spec(server(), tmp_path), config(cpu_mode="custom", cpu_model="Haswell"))
    )
    assert root.find("cpu").get("mode") == "custom"
    assert root.findtext("cpu/model") == "Haswell"
    with pytest.raises(DriverError, match="cpu_model"):
        domain_xml(spec(server(), tmp_path), config(cpu_mode="custom"))


def test_topology_rules() -> None:
    assert cpu_topology(server().flavor) is None
    assert cpu_topology(server(**{"hw:cpu_threads": "2"}).flavor) == (2, 1, 2)
    with pytest.raises(DriverError, match="is not its 4 vCPUs"):
        cpu_topology(server(**{"hw:cpu_sockets": "3"}).flavor)
    with pytest.raises(DriverError, match="hw:cpu_cores='x' is not a number"):
        cpu_topology(server(**{"hw:cpu_cores": "x"}).flavor)


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="hw_disk_bus='floppy'"):
        domain_xml(spec(server(), tmp_path, image_properties={"hw_disk_bus": "floppy"}), config())
    with pytest.raises(DriverError, match="hw_vif_model='tulip'"):
        domain_xml(spec(server(), tmp_path, image_properties={"hw_vif_model": "tulip"}), config())
    with pytest.raises(DriverError, match="virt_type='xen'"):
        domain_xml(spec(server(), tmp_path), config(virt_type="xen"))
    with pytest.raises(DriverError, match="physical network 'physnet9'"):
        domain_xml(spec(server([vif(1, physical_network="physnet9")]), tmp_path), config())


def test_vlan_interfaces(tmp_path: Path) -> None:
    vlan = vif(1, network_type="vlan", segmentation_id=100)
    root = ET.fromstring(domain_xml(spec(server([vlan]), tmp_path), config()))
    iface = root.find("devices/interface")
    assert iface.find("virtualport").get("type") == "openvswitch"
    assert iface.find("vlan/tag").get("id") == "100"
    assert iface.find("source").get("bridge") == "br0"
    root = ET.fromstring(domain_xml(spec(server([vlan]), tmp_path), config(vlan_bridge="br{vlan}")))
    iface = root.find("devices/interface")
    assert iface.find("source").get("bridge") == "br100" and iface.find("vlan") is None


def test_vnc_graphics_on_by_default(tmp_path: Path) -> None:
    root = ET.fromstring(domain_xml(spec(server(), tmp_path), config()))
    graphics = root.findall("devices/graphics")
    assert [g.attrib for g in graphics] == [
        {"type": "vnc", "autoport": "yes", "listen": "127.0.0.1"}
    ]
    assert root.find("devices/video/model").get("type") == "vga"
    # The serial console stays as it was, logged, beside the graphical one.
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/serial/log").get("file") == str(tmp_path / "console.log")
    assert root.find("devices/console/target").attrib == {"type": "serial", "port": "0"}
    root = ET.fromstring(
        domain_xml(spec(server(), tmp_path), config(vnc_server_listen="192.0.2.10"))
    )
    assert root.find("devices/graphics").get("listen") == "192.0.2.10"


def test_vnc_graphics_off(tmp_path: Path) -> None:
    cfg = config()
    cfg.libvirt.vnc_enabled = False
    root = ET.fromstring(domain_xml(spec(server(), tmp_path), cfg))
    assert root.find("devices/graphics") is None and root.find("devices/video") is None
    assert root.find("devices/serial/log") is not None and root.find("devices/console") is not None


@needs_validator
def test_schema_vnc_graphics(tmp_path: Path) -> None:
    validate(domain_xml(spec(server(), tmp_path), config(vnc_server_listen="::1")), tmp_path)
    cfg = config()
    cfg.libvirt.vnc_enabled = False
    validate(domain_xml(spec(server(), tmp_path), cfg), tmp_path)


@needs_validator
def test_schema_topology_flavor(tmp_path: Path) -> None:
    s = server(**{"hw:cpu_sockets": "1", "hw:cpu_cores": "2", "hw:cpu_threads": "2"})
    validate(domain_xml(spec(s, tmp_path), config(virt_type="kvm")), tmp_path)
    validate(domain_xml(spec(s, tmp_path), config(cpu_mode="custom", cpu_model="EPYC")), tmp_path)


@needs_validator
def test_schema_direct_kernel_boot_and_config_drive(tmp_path: Path) -> None:
    s = server()
    props = {"os_command_line": "console=ttyS0 root=/dev/vda", "hw_disk_bus": "scsi"}
    xml = domain_xml(
        spec(
            s,
            tmp_path,
            image_properties=props,
            kernel=tmp_path / "vmlinuz",
            initrd=tmp_path / "initrd",
            config_drive=tmp_path / "disk.config",
        ),
        config(),
    )
    root = ET.fromstring(xml)
    assert root.findtext("os/kernel") == str(tmp_path / "vmlinuz")
    assert root.findtext("os/initrd") == str(tmp_path / "initrd")
    assert root.findtext("os/cmdline") == "console=ttyS0 root=/dev/vda"
    assert root.find("devices/controller").get("model") == "virtio-scsi"
    assert root.find("devices/disk[@device='cdrom']/target").get("bus") == "scsi"
    validate(xml, tmp_path)


@needs_validator
def test_schema_two_nics_and_vlan(tmp_path: Path) -> None:
    vifs = [vif(1), vif(2, physical_network="physnet2", network_type="vlan", segmentation_id=7)]
    xml = domain_xml(spec(server(vifs), tmp_path), config())
    assert len(ET.fromstring(xml).findall("devices/interface")) == 2
    validate(xml, tmp_path)


@needs_validator
def test_schema_pci_devices(tmp_path: Path) -> None:
    devs = [
        PciAddress(name="pci_0000_03_00_0", domain=0, bus=3, slot=0, function=0),
        PciAddress(name="pci_0000_81_00_1", domain=0, bus=0x81, slot=0, function=1),
    ]
    xml = domain_xml(
        spec(server(**{"pci_passthrough:alias": "gpu:2"}), tmp_path, hostdevs=devs), config()
    )
    addrs = ET.fromstring(xml).findall("devices/hostdev/source/address")
    assert [a.get("bus") for a in addrs] == ["0x03", "0x81"]
    validate(xml, tmp_path)
