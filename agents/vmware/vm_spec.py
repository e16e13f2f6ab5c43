"""What a VM is made of in vSphere terms: its config spec (CPU, memory, root disk, NICs, the server id tag) and the NICs and disk changes of later reconfigures.

NICs are vmxnet3 cards on the port group [compute] physical_network_mappings maps the
port's physical network to (physnet1:DC0_DVPG0), standard or distributed; each card keeps
the port's MAC.
"""

from __future__ import annotations

import math
from typing import Any

from pyVmomi import vim

from hvmesh.agents.driver import DriverError
from hvmesh.core.protocol.records import Flavor, Server, Vif

#: extraConfig key holding the server id: how the driver knows its VMs.
SERVER_ID_KEY = "hvmesh.server_id"
GUEST_ID = "otherGuest64"
CONTROLLER_KEY = -100
DISK_KEY = -101


def vm_name(server_id: str) -> str:
    """A VM's name in vCenter: the server id, so it is unique and found by name too."""
    return server_id


def portgroup_mappings(entries: list[str]) -> dict[str, str]:
    """[compute] physical_network_mappings as {physnet: port group name}."""
    out: dict[str, str] = {}
    for entry in entries:
        physnet, sep, group = entry.partition(":")
        if not sep or not physnet or not group:
            raise DriverError(
                f"[compute] physical_network_mappings: {entry!r} is not PHYSNET:PORTGROUP"
            )
        out[physnet] = group
    return out


def portgroup_for(vif: Vif, mappings: dict[str, str]) -> str:
    group = mappings.get(vif.physical_network)
    if group is None:
        raise DriverError(
            f"physical network {vif.physical_network!r} of port {vif.port_id} has no port "
            "group here: add it to [compute] physical_network_mappings"
        )
    return group


def find_network(datacenter: Any, name: str) -> Any:
    """(worker thread) The datacenter's network (port group) called `name`."""
    for net in datacenter.network:
        if net.name == name:
            return net
    raise DriverError(
        f"port group {name!r} (from [compute] physical_network_mappings) is not in "
        f"datacenter {datacenter.name}"
    )


def nic_backing(network: Any) -> Any:
    """(worker thread) A card's backing on a standard or distributed port group."""
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        switch = network.config.distributedVirtualSwitch
        if switch is None:
            raise DriverError(f"distributed port group {network.name} has no switch")
        port = vim.dvs.PortConnection(portgroupKey=network.key, switchUuid=switch.uuid)
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(port=port)
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
        deviceName=network.name, network=network
    )


def nic_add(vif: Vif, network: Any, key: int) -> Any:
    """(worker thread) The device change that adds a vmxnet3 card for `vif`."""
    nic = vim.vm.device.VirtualVmxnet3(
        key=key,
        macAddress=vif.mac,
        addressType="manual",
        backing=nic_backing(network),
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=True, connected=True, allowGuestControl=True
        ),
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)


def find_nic(vm_devices: list[Any], mac: str) -> Any | None:
    for dev in vm_devices:
        if (
            isinstance(dev, vim.vm.device.VirtualEthernetCard)
            and (dev.macAddress or "").lower() == mac.lower()
        ):
            return dev
    return None


def nic_remove(device: Any) -> Any:
    return vim.vm.device.VirtualDeviceSpec(operation="remove", device=device)


def root_disk(datastore: str, disk_path: str | None, capacity_kb: int) -> list[Any]:
    """A SCSI controller and the root disk: the existing file `disk_path` (copied from
    the image cache, `capacity_kb` large), or a new thin disk of `capacity_kb` when None."""
    controller = vim.vm.device.VirtualLsiLogicController(
        key=CONTROLLER_KEY, busNumber=0, sharedBus="noSharing"
    )
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        diskMode="persistent",
        thinProvisioned=True,
        fileName=disk_path or f"[{datastore}]",
    )
    disk = vim.vm.device.VirtualDisk(
        key=DISK_KEY,
        controllerKey=CONTROLLER_KEY,
        unitNumber=0,
        capacityInKB=capacity_kb,
        backing=backing,
    )
    disk_spec = vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)
    if disk_path is None:
        disk_spec.fileOperation = vim.vm.device.VirtualDeviceSpec.FileOperation.create
    return [vim.vm.device.VirtualDeviceSpec(operation="add", device=controller), disk_spec]


def create_spec(
    server: Server, datastore: str, disk_path: str | None, capacity_kb: int, nics: list[Any]
) -> Any:
    """The ConfigSpec CreateVM_Task gets for `server`."""
    flavor = server.flavor
    return vim.vm.ConfigSpec(
        name=vm_name(server.id),
        guestId=GUEST_ID,
        numCPUs=flavor.vcpus,
        memoryMB=flavor.ram_mb,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=root_disk(datastore, disk_path, capacity_kb) + nics,
        extraConfig=[vim.option.OptionValue(key=SERVER_ID_KEY, value=server.id)],
        annotation=f"hvmesh server {server.name} ({server.id})",
    )


def resize_spec(flavor: Flavor) -> Any:
    return vim.vm.ConfigSpec(numCPUs=flavor.vcpus, memoryMB=flavor.ram_mb)


def grow_disk(devices: list[Any], disk_gb: int) -> Any | None:
    """The device change that grows the root disk to `disk_gb`; None if it is as large."""
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualDisk):
            want = disk_gb * 1024 * 1024
            if dev.capacityInKB >= want:
                return None
            dev.capacityInKB = want
            return vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)
    return None


def flat_descriptor(flat_name: str, size: int) -> bytes:
    """A monolithicFlat VMDK descriptor for a raw image uploaded as `flat_name`."""
    sectors = max(math.ceil(size / 512), 1)
    cylinders = max(sectors // (255 * 63), 1)
    return (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="vmfs"\n\n'
        f'RW {sectors} VMFS "{flat_name}"\n\n'
        'ddb.adapterType = "lsilogic"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "255"\nddb.geometry.sectors = "63"\n'
        'ddb.virtualHWVersion = "14"\n'
    ).encode()
