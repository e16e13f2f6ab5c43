"""Guest network interfaces: a server's Vif as a libvirt <interface> element.

Each Vif plugs into the bridge its physical network maps to in [compute]
physical_network_mappings ("physnet1:br0"). A flat network uses that bridge as it is.
A VLAN network (network_type "vlan") is, by [libvirt] vlan_bridge:

- empty (the default): the mapped bridge is an Open vSwitch bridge, and the port gets
  an openvswitch virtualport with the VLAN as its access tag;
- a template such as "br{vlan}": the port plugs into that Linux bridge, which the
  operator set up to carry the VLAN ({bridge} is the mapped bridge, {vlan} the tag).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hvmesh.agents.driver import DriverError
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Vif

NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet")


def bridge_mappings(entries: list[str]) -> dict[str, str]:
    """[compute] physical_network_mappings as {physnet: bridge}."""
    out: dict[str, str] = {}
    for entry in entries:
        physnet, _, bridge = (p.strip() for p in entry.partition(":"))
        if not physnet or not bridge:
            raise DriverError(
                f"[compute] physical_network_mappings: {entry!r} is not PHYSNET:BRIDGE"
            )
        out[physnet] = bridge
    return out


def nic_model(image_properties: dict[str, str]) -> str:
    model = image_properties.get("hw_vif_model", "virtio")
    if model not in NIC_MODELS:
        raise DriverError(f"image property hw_vif_model={model!r} is not one of {NIC_MODELS}")
    return model


def interface_element(vif: Vif, cfg: Config, model: str) -> ET.Element:
    """The <interface> element of one Vif; DriverError if its network has no bridge here."""
    bridges = bridge_mappings(cfg.compute.physical_network_mappings)
    bridge = bridges.get(vif.physical_network)
    if bridge is None:
        raise DriverError(
            f"physical network {vif.physical_network!r} of port {vif.port_id} has no bridge "
            "on this host: add it to [compute] physical_network_mappings"
        )
    iface = ET.Element("interface", type="bridge")
    ET.SubElement(iface, "mac", address=vif.mac)
    ovs_tag: int | None = None
    if vif.network_type == "vlan":
        if vif.segmentation_id is None:
            raise DriverError(f"port {vif.port_id} is on a VLAN network without a VLAN id")
        if cfg.libvirt.vlan_bridge:
            try:
                bridge = cfg.libvirt.vlan_bridge.format(bridge=bridge, vlan=vif.segmentation_id)
            except (KeyError, IndexError, ValueError) as exc:
                raise DriverError(
                    f"[libvirt] vlan_bridge {cfg.libvirt.vlan_bridge!r} is not a template "
                    f"of {{bridge}} and {{vlan}}: {exc}"
                ) from None
        else:
            ovs_tag = vif.segmentation_id
    elif vif.network_type != "flat":
        raise DriverError(
            f"port {vif.port_id}: network type {vif.network_type!r} is not flat or vlan"
        )
    ET.SubElement(iface, "source", bridge=bridge)
    if ovs_tag is not None:
        vlan = ET.SubElement(iface, "vlan")
        ET.SubElement(vlan, "tag", id=str(ovs_tag))
        ET.SubElement(iface, "virtualport", type="openvswitch")
    ET.SubElement(iface, "model", type=model)
    if vif.mtu:
        ET.SubElement(iface, "mtu", size=str(vif.mtu))
    return iface


def interface_xml(vif: Vif, cfg: Config, model: str) -> str:
    return ET.tostring(interface_element(vif, cfg, model), encoding="unicode")
