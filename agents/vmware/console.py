"""The guest's console log: each VM's serial port writes to console.log in the VM's own datastore folder, read back over vCenter's HTTP file API."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from hvmesh.agents.driver import DriverError
from hvmesh.agents.vmware import vm_spec
from hvmesh.agents.vmware.drive import VmwareDrive
from hvmesh.core import log
from hvmesh.core.protocol.records import Server

LOG = log.get_logger(__name__)

LOG_NAME = "console.log"
#: The most of the log read back (its end); the runtime cuts it to the lines asked for.
TAIL_BYTES = 1024 * 1024
SERIAL_KEY = -300


def console_path(datastore: str, server_id: str) -> str:
    """The datastore path of the console log of the server's VM in its folder there."""
    return f"[{datastore}] {vm_spec.vm_name(server_id)}/{LOG_NAME}"


def serial_add(path: str) -> Any:
    """The device change adding a serial port that writes to the file `path`."""
    port = vim.vm.device.VirtualSerialPort(
        key=SERIAL_KEY,
        yieldOnPoll=True,
        backing=vim.vm.device.VirtualSerialPort.FileBackingInfo(fileName=path),
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=port)


def serial_log(devices: list[Any]) -> Any | None:
    """The VM's serial port that writes to a file, or None."""
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualSerialPort) and isinstance(
            dev.backing, vim.vm.device.VirtualSerialPort.FileBackingInfo
        ):
            return dev
    return None


def split_path(path: str) -> tuple[str, str]:
    """("ds", "folder/file") of "[ds] folder/file"."""
    datastore, _, rest = path[1:].partition("] ")
    return datastore, rest


class VmwareConsole(VmwareDrive):
    async def get_console_output(self, server_id: str) -> str:
        vm = await self.require(server_id)
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        port = serial_log(devices)
        if port is None:
            raise NotImplementedError(f"instance {server_id} has no serial port writing a log")
        datastore, rel = split_path(str(port.backing.fileName))
        data = await self.files.read_tail(
            await self.cookie(), self.location.datacenter_name, datastore, rel, TAIL_BYTES
        )
        return (data or b"").decode("utf-8", "replace")  # no file yet: nothing written

    async def redo_console(self, vm: Any, server: Server) -> None:
        """Point the VM's serial log at its own folder (a clone still names its source's)."""
        devices = await self.session.call(lambda _si: list(vm.config.hardware.device))
        port = serial_log(devices)
        if port is None:
            return
        vmx = str(await self.session.call(lambda _si: vm.config.files.vmPathName))
        datastore, rest = split_path(vmx)
        if "/" not in rest:
            raise DriverError(f"the VM of {server.id} has no folder of its own ({vmx})")
        port.backing = vim.vm.device.VirtualSerialPort.FileBackingInfo(
            fileName=f"[{datastore}] {rest.rsplit('/', 1)[0]}/{LOG_NAME}"
        )
        spec = vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=port)]
        )
        what = f"re-pointing the console log of {server.id}"
        await self.vm_task(vm, "ReconfigVM_Task", what, spec=spec)
