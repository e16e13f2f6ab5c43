"""A server's root disk as an image: a VM snapshot holds the base disk still while its flat VMDK (raw bytes) is downloaded, then the snapshot is removed.

The root disk is a monolithic flat VMDK made from a raw image (images.py), so its
"-flat.vmdk" file is the raw disk, bootable again by this driver. A running guest keeps
running: its writes go to the snapshot's delta disk meanwhile, which removing the
snapshot folds back in.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pyVmomi import vim

from hvmesh.agents.driver import DriverError
from hvmesh.agents.vmware.console import split_path
from hvmesh.agents.vmware.live import VmwareLive
from hvmesh.core import log
from hvmesh.core.protocol.records import Server

LOG = log.get_logger(__name__)

SNAPSHOT_NAME = "hvmesh-image"


def base_disk(devices: list[Any]) -> str:
    """The datastore path of the root disk's base VMDK (under any snapshots' deltas)."""
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualDisk):
            backing: Any = dev.backing
            while getattr(backing, "parent", None) is not None:
                backing = backing.parent
            return str(backing.fileName)
    raise DriverError("the VM has no disk")


class VmwareSnapshot(VmwareLive):
    async def snapshot(self, server: Server, target: Path) -> str:
        vm = await self.require(server.id)
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        datastore, rel = split_path(base_disk(devices))
        flat = rel.removesuffix(".vmdk") + "-flat.vmdk"
        snap = await self.vm_task(
            vm,
            "CreateSnapshot_Task",
            f"holding the disk of {server.id} for an image",
            name=SNAPSHOT_NAME,
            description="made while hvmesh copies the root disk into an image",
            memory=False,
            quiesce=False,
        )
        try:
            await self.files.download(
                await self.cookie(), self.location.datacenter_name, datastore, flat, target
            )
        except BaseException:
            with contextlib.suppress(OSError):
                target.unlink()
            raise
        finally:
            await self.session.run_task(
                lambda _si: snap.RemoveSnapshot_Task(removeChildren=False),
                f"removing the image snapshot of {server.id}",
            )
        LOG.info("vmware.snapshot", server=server.id, size=target.stat().st_size)
        return "raw"
