"""The config drive of a VMware VM: the server's ISO uploaded into the VM's folder on its datastore and attached as a CD-ROM.

The ISO is "[datastore] <server id>/config-drive.iso", next to the root disk, built by
the driver contract's write_config_drive. It is uploaded before CreateVM_Task (whose
spec gets the CD-ROM), rewritten into a clone's folder on a cold migration, and deleted
with the VM.
"""

from __future__ import annotations

import http.client
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pyVmomi import vim, vmodl

from hvmesh.agents.driver import DriverError
from hvmesh.agents.vmware.base import VmwareBase
from hvmesh.agents.vmware.session import fault_message
from hvmesh.core import log
from hvmesh.core.protocol.records import Server

LOG = log.get_logger(__name__)

ISO_NAME = "config-drive.iso"
IDE_KEY = 200  # the IDE controller every VM has
CDROM_KEY = -300


def cdrom_add(path: str, controller_key: int = IDE_KEY, unit: int = 0) -> Any:
    """The device change that adds a CD-ROM backed by the ISO file `path`."""
    cdrom = vim.vm.device.VirtualCdrom(
        key=CDROM_KEY,
        controllerKey=controller_key,
        unitNumber=unit,
        backing=vim.vm.device.VirtualCdrom.IsoBackingInfo(fileName=path),
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=True, connected=True, allowGuestControl=False
        ),
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=cdrom)


def drive_cdrom(devices: list[Any]) -> Any | None:
    """The VM's CD-ROM backed by a config drive, or None."""
    for dev in devices:
        backing = getattr(dev, "backing", None)
        if (
            isinstance(dev, vim.vm.device.VirtualCdrom)
            and isinstance(backing, vim.vm.device.VirtualCdrom.IsoBackingInfo)
            and (backing.fileName or "").endswith("/" + ISO_NAME)
        ):
            return dev
    return None


class VmwareDrive(VmwareBase):
    async def upload_drive(self, server: Server, datastore: str, folder: str) -> str:
        """Build the server's config drive and upload it to `folder` on `datastore`; its
        datastore path."""
        path = f"[{datastore}] {folder}/{ISO_NAME}"
        tmp = Path(tempfile.mkdtemp(prefix="hvmesh-drive-"))
        try:
            local = await self.write_config_drive(server, tmp / ISO_NAME)
            data = local.read_bytes()
            loc = self.location
            cookie = await self.cookie()
            try:
                await self.files.upload(
                    cookie,
                    loc.datacenter_name,
                    datastore,
                    f"{folder}/{ISO_NAME}",
                    data,
                    len(data),
                )
            except (OSError, http.client.HTTPException) as exc:
                raise DriverError(f"uploading the config drive of {server.id}: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        LOG.info("vmware.config_drive_uploaded", server=server.id, path=path, size=len(data))
        return path

    async def drive_of(self, vm: Any) -> str | None:
        """The datastore path of the VM's config drive, or None."""
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        dev = drive_cdrom(devices)
        return None if dev is None else str(dev.backing.fileName)

    async def delete_drive(self, path: str, server_id: str) -> None:
        """Delete the config drive file `path`; no error when it is gone."""
        dc = self.location.datacenter
        try:
            await self.session.run_task(
                lambda si: si.content.fileManager.DeleteDatastoreFile_Task(
                    name=path, datacenter=dc
                ),
                f"deleting the config drive of {server_id}",
            )
        except (DriverError, vmodl.MethodFault) as exc:  # gone already, or left behind
            error = str(exc) if isinstance(exc, DriverError) else fault_message(exc)
            LOG.info("vmware.config_drive_not_deleted", server=server_id, error=error)
            return
        LOG.info("vmware.config_drive_deleted", server=server_id, path=path)

    async def redo_drive(self, vm: Any, server: Server) -> None:
        """Point the VM's config-drive CD-ROM at a fresh ISO in the VM's own folder (a
        clone still names its source's)."""
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        dev = drive_cdrom(devices)
        if dev is None:
            return
        vmx = str(await self.session.call(lambda _si: vm.config.files.vmPathName))
        datastore, _, rest = vmx[1:].partition("] ")
        folder = rest.rsplit("/", 1)[0] if "/" in rest else server.id
        dev.backing = vim.vm.device.VirtualCdrom.IsoBackingInfo(
            fileName=await self.upload_drive(server, datastore, folder)
        )
        spec = vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)]
        )
        await self.vm_task(
            vm, "ReconfigVM_Task", f"re-pointing the drive of {server.id}", spec=spec
        )
