"""PCI passthrough: aliases from [libvirt] pci_alias, the host's PCI node devices, and
which of them a new guest may take.

An alias names a vendor and product id; a flavor asks for devices by alias in its
`pci_passthrough:alias` extra spec ("gpu:2"). A device is free when no domain defined
on the host has it as a <hostdev>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import msgspec

from hvmesh.agents.driver import DriverError
from hvmesh.core.protocol.resources import parse_counts, pci_class


class PciAlias(msgspec.Struct, frozen=True):
    name: str
    vendor_id: int
    product_id: int


class PciAddress(msgspec.Struct, frozen=True):
    """One host PCI device (its node device name and its address)."""

    name: str
    domain: int
    bus: int
    slot: int
    function: int
    vendor_id: int = 0
    product_id: int = 0


def parse_aliases(entries: list[str]) -> dict[str, PciAlias]:
    """[libvirt] pci_alias entries "ALIAS:VENDOR:PRODUCT" (hex ids) by alias name."""
    out: dict[str, PciAlias] = {}
    for entry in entries:
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) != 3 or not parts[0]:
            raise DriverError(f"[libvirt] pci_alias: {entry!r} is not ALIAS:VENDOR_ID:PRODUCT_ID")
        try:
            vendor, product = (int(p.removeprefix("0x"), 16) for p in parts[1:])
        except ValueError:
            raise DriverError(
                f"[libvirt] pci_alias: {entry!r} has a vendor or product id that is not hex"
            ) from None
        out[parts[0]] = PciAlias(parts[0], vendor, product)
    return out


def requested(extra_specs: dict[str, str]) -> dict[str, int]:
    """How many devices of each alias a flavor's extra specs ask for."""
    spec = extra_specs.get("pci_passthrough:alias", "")
    try:
        return parse_counts(spec, "pci_passthrough:alias")
    except ValueError as exc:
        raise DriverError(str(exc)) from None


def _int(text: str | None) -> int:
    if not text:
        return 0
    return int(text, 0)


def parse_node_device(xml: str) -> PciAddress | None:
    """The address and ids of a PCI node device from its XML; None if it has none."""
    root = ET.fromstring(xml)
    cap = root.find("capability[@type='pci']")
    if cap is None:
        return None
    vendor = cap.find("vendor")
    product = cap.find("product")
    return PciAddress(
        name=root.findtext("name", ""),
        domain=_int(cap.findtext("domain")),
        bus=_int(cap.findtext("bus")),
        slot=_int(cap.findtext("slot")),
        function=_int(cap.findtext("function")),
        vendor_id=_int(vendor.get("id") if vendor is not None else None),
        product_id=_int(product.get("id") if product is not None else None),
    )


def host_devices(conn: libvirt.virConnect) -> list[PciAddress]:
    """Every PCI device the host has."""
    out = []
    for dev in conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV):
        addr = parse_node_device(dev.XMLDesc(0))
        if addr is not None:
            out.append(addr)
    return out


def _key(domain: int, bus: int, slot: int, function: int) -> tuple[int, int, int, int]:
    return (domain, bus, slot, function)


def devices_in_use(conn: libvirt.virConnect, except_domain: str = "") -> set[tuple[int, ...]]:
    """Addresses of PCI devices some defined domain (other than `except_domain`) holds."""
    used: set[tuple[int, ...]] = set()
    for dom in conn.listAllDomains(0):
        if dom.name() == except_domain:
            continue
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for addr in root.iterfind("devices/hostdev[@type='pci']/source/address"):
            used.add(_key(*(_int(addr.get(k)) for k in ("domain", "bus", "slot", "function"))))
    return used


def counts(conn: libvirt.virConnect, aliases: dict[str, PciAlias]) -> dict[str, int]:
    """Resource class (CUSTOM_PCI_<ALIAS>) -> how many devices of that alias the host has."""
    devices = host_devices(conn)
    out: dict[str, int] = {}
    for alias in aliases.values():
        n = sum(
            1 for d in devices if (d.vendor_id, d.product_id) == (alias.vendor_id, alias.product_id)
        )
        if n:
            out[pci_class(alias.name)] = n
    return out


def pick(
    conn: libvirt.virConnect,
    aliases: dict[str, PciAlias],
    wanted: dict[str, int],
    domain_name: str,
) -> list[PciAddress]:
    """Free host devices for a guest asking for `wanted` (alias -> count); DriverError if
    an alias is unknown or too few of its devices are free."""
    if not wanted:
        return []
    used = devices_in_use(conn, except_domain=domain_name)
    free = [d for d in host_devices(conn) if _key(d.domain, d.bus, d.slot, d.function) not in used]
    chosen: list[PciAddress] = []
    for name, n in wanted.items():
        alias = aliases.get(name)
        if alias is None:
            raise DriverError(f"PCI alias {name!r} is not in [libvirt] pci_alias")
        match = [
            d
            for d in free
            if (d.vendor_id, d.product_id) == (alias.vendor_id, alias.product_id)
            and d not in chosen
        ]
        if len(match) < n:
            raise DriverError(
                f"PCI alias {name!r}: {n} device(s) wanted, {len(match)} free on this host"
            )
        chosen.extend(match[:n])
    return chosen
