"""A Hyper-V host model behind the WinRM test peer: the Hyper-V, storage and file cmdlets the driver runs, with Hyper-V's semantics and its error wording.

A `World` holds hosts (two for Move-VM); each `HostModel` has logical processors and
memory (running and paused VMs hold their startup memory; a start that does not fit
fails), a volume whose free space shrinks with the files on it, files and folders
(case-insensitive Windows paths), virtual switches and VMs. A VM's state follows
Hyper-V's machine: Off, Running, Paused, Saved; a transition it does not allow fails
with "'<name>' failed to change state." as Hyper-V words it. VM names take PowerShell
wildcards where Hyper-V's cmdlets do (-Name), and duplicate names are allowed, as in
Hyper-V.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import ntpath
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.winrm.powershell import BASE_CMDLETS, CmdletSpec, Invocation, PSError, PSObject

GIB = 1 << 30
STATES = {"Running": 2, "Off": 3, "Saved": 6, "Paused": 9}
INVALID_STATE = "The operation cannot be performed while the object is in its current state."


def key(path: str) -> str:
    return ntpath.normcase(ntpath.normpath(str(path)))


def wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.I)


@dataclass
class Adapter:
    name: str
    mac: str
    switch: str = ""
    vlan: int | None = None

    def ps_json(self) -> dict[str, Any]:
        return {"Name": self.name, "MacAddress": self.mac, "SwitchName": self.switch or None}

    def ps_property(self, name: str) -> Any:
        return PSObject(self.ps_json()).prop(name)


@dataclass
class VM:
    name: str
    generation: int
    memory: int
    path: str
    host: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "Off"
    processors: int = 1
    dynamic_memory: bool = False
    notes: str = ""
    disks: list[str] = field(default_factory=list)
    dvds: list[str] = field(default_factory=list)
    adapters: list[Adapter] = field(default_factory=list)
    #: Checkpoints by name: the (disk, its checkpoint's differencing disk) pairs.
    checkpoints: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: Whether the guest answers the shutdown integration service (Stop-VM, reboots).
    guest_shutdown: bool = True
    boots: int = 0
    resets: int = 0

    def ps_json(self) -> dict[str, Any]:
        return {
            "Name": self.name, "Id": self.id, "State": STATES[self.state],
            "Notes": self.notes, "ProcessorCount": self.processors,
            "MemoryStartup": self.memory, "Generation": self.generation,
            "ComputerName": self.host, "Path": self.path,
        }  # fmt: skip

    def ps_property(self, name: str) -> Any:
        return PSObject(self.ps_json()).prop(name)


@dataclass
class HostModel:
    name: str
    logical_processors: int = 8
    memory_capacity: int = 16 * GIB
    volume_size: int = 200 * GIB
    switches: list[str] = field(default_factory=lambda: ["External", "Internal"])
    migration_enabled: bool = True
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # key -> (path, data)
    dirs: dict[str, str] = field(default_factory=dict)
    vms: list[VM] = field(default_factory=list)

    # --- files -------------------------------------------------------------------------------

    def is_dir(self, path: str) -> bool:
        k = key(path)
        return k in self.dirs or bool(re.fullmatch(r"[a-z]:\\?", k))

    def exists(self, path: str) -> bool:
        return key(path) in self.files or self.is_dir(path)

    def mkdir(self, path: str) -> None:
        path = ntpath.normpath(path)
        while path and not self.is_dir(path):
            self.dirs[key(path)] = path
            path = ntpath.dirname(path)

    def write(self, path: str, data: bytes, append: bool = False) -> None:
        if not self.is_dir(ntpath.dirname(ntpath.normpath(path))):
            raise PSError(
                f"Could not find a part of the path '{path}'.", "ObjectNotFound",
                "GetContentWriterDirectoryNotFoundError",
            )  # fmt: skip
        self.check_not_in_use(path)
        old = self.files.get(key(path), (path, b""))[1] if append else b""
        self.files[key(path)] = (path, old + data)

    def read(self, path: str) -> bytes:
        found = self.files.get(key(path))
        if found is None:
            raise PSError(
                f"Cannot find path '{path}' because it does not exist.", "ObjectNotFound",
                "PathNotFound",
            )  # fmt: skip
        return found[1]

    def in_use(self, path: str) -> bool:
        k = key(path)
        for vm in self.vms:
            if vm.state == "Off":
                continue
            for used in vm.disks + vm.dvds:
                if key(used) == k or key(used).startswith(k + "\\"):
                    return True
        return False

    def check_not_in_use(self, path: str) -> None:
        if self.in_use(path):
            raise PSError(
                f"The process cannot access the file '{path}' because it is being used by "
                "another process.", "WriteError", "RemoveFileSystemItemIOError",
            )  # fmt: skip

    def remove(self, path: str) -> None:
        k = key(path)
        if not self.exists(path):
            raise PSError(
                f"Cannot find path '{path}' because it does not exist.", "ObjectNotFound",
                "PathNotFound",
            )  # fmt: skip
        self.check_not_in_use(path)
        for table in (self.files, self.dirs):
            for name in [n for n in table if n == k or n.startswith(k + "\\")]:
                del table[name]

    def vhd_parent(self, path: str) -> str | None:
        """The parent a differencing disk made by New-VHD names."""
        try:
            meta = json.loads(self.read(path)[8:] or b"{}")
        except ValueError:
            return None  # a base image: its own bytes, no parent
        return meta.get("parent") if isinstance(meta, dict) else None

    def used_bytes(self) -> int:
        return sum(len(data) for _, data in self.files.values())

    # --- VMs ---------------------------------------------------------------------------------

    def used_memory(self) -> int:
        return sum(vm.memory for vm in self.vms if vm.state in ("Running", "Paused"))

    def find(self, pattern: Any) -> list[VM]:
        """VMs by -Name: a wildcard pattern matches any number; a plain name that matches
        none is Hyper-V's error."""
        names = pattern if isinstance(pattern, list) else [pattern]
        found: list[VM] = []
        for name in names:
            name = str(name)
            matched = [vm for vm in self.vms if wildcard(name).fullmatch(vm.name)]
            if not matched and not re.search(r"[*?\[]", name):
                raise PSError(
                    f'Hyper-V was unable to find a virtual machine with name "{name}".',
                    "InvalidArgument", "InvalidParameter",
                )  # fmt: skip
            found.extend(vm for vm in matched if vm not in found)
        return found


class FileStream:
    """[IO.File]::OpenRead's stream over a file's bytes as they were when opened."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.closed = False

    def Seek(self, offset: int, origin: str) -> int:
        if str(origin).lower() != "begin":
            raise PSError("only SeekOrigin.Begin is modelled", "NotImplemented")
        self.pos = int(offset)
        return self.pos

    def Close(self) -> None:
        self.closed = True


class BinaryReader:
    def __init__(self, stream: FileStream) -> None:
        self.stream = stream

    def ReadBytes(self, count: int) -> bytes:
        if self.stream.closed:
            raise PSError('Exception calling "ReadBytes": Cannot access a closed file.')
        data = self.stream.data[self.stream.pos : self.stream.pos + int(count)]
        self.stream.pos += len(data)
        return data


class World:
    """Hyper-V hosts that can reach each other (for Move-VM); one lock for all of them."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.hosts: dict[str, HostModel] = {}

    def add(self, name: str, **kw: Any) -> HostModel:
        host = HostModel(name, **kw)
        host.mkdir("C:\\")
        self.hosts[name.lower()] = host
        return host


def failed_state(vm: VM, verb: str = "change state") -> PSError:
    return PSError(f"'{vm.name}' failed to {verb}.\n{INVALID_STATE}", "InvalidOperation",
                   "InvalidState")  # fmt: skip


class HypervCmdlets:
    """The cmdlets of one host, for the interpreter."""

    def __init__(self, world: World, host: HostModel) -> None:
        self.world = world
        self.host = host

    def vms(self, inv: Invocation, by: str = "Name") -> list[VM]:
        if inv.has("VM"):
            got = inv.get("VM")
            return got if isinstance(got, list) else [got]
        if inv.input and all(isinstance(i, VM) for i in inv.input):
            return list(inv.input)
        name = inv.get(by, (inv.get("__positional") or [None])[0])
        if name is None:
            raise PSError("Cannot process command because of one or more missing mandatory "
                          f"parameters: {by}.", "InvalidArgument", "MissingMandatoryParameter")  # fmt: skip
        return self.host.find(name)

    def one_vm(self, inv: Invocation) -> VM:
        found = self.vms(inv)
        if len(found) != 1:
            raise PSError(f"{len(found)} virtual machines match; one was expected.",
                          "InvalidArgument", "InvalidParameter")  # fmt: skip
        return found[0]

    # --- host ---------------------------------------------------------------------------------

    def get_vmhost(self, inv: Invocation) -> list[Any]:
        h = self.host
        return [PSObject({
            "ComputerName": h.name, "LogicalProcessorCount": h.logical_processors,
            "MemoryCapacity": h.memory_capacity, "VirtualMachineMigrationEnabled": h.migration_enabled,
        })]  # fmt: skip

    def get_volume(self, inv: Invocation) -> list[Any]:
        path = str(inv.get("FilePath"))
        if not self.host.exists(path):
            raise PSError(f"No MSFT_Volume objects found with property 'FilePath' equal to "
                          f"'{path}'.", "ObjectNotFound", "CmdletizationQuery_NotFound")  # fmt: skip
        size = self.host.volume_size
        return [PSObject({"DriveLetter": "C", "Size": size,
                          "SizeRemaining": size - self.host.used_bytes()})]  # fmt: skip

    def get_ciminstance(self, inv: Invocation) -> list[Any]:
        if str(inv.get("ClassName")).lower() != "win32_operatingsystem":
            raise PSError("Invalid class", "ObjectNotFound", "HRESULT 0x80041010")
        return [PSObject({"Caption": "Microsoft Windows Server 2022 Datacenter",
                          "Version": "10.0.20348", "OSArchitecture": "64-bit"})]  # fmt: skip

    def get_vmswitch(self, inv: Invocation) -> list[Any]:
        return [PSObject({"Name": s, "SwitchType": 2}) for s in self.host.switches]

    # --- files ------------------------------------------------------------------------------------

    def new_item(self, inv: Invocation) -> list[Any]:
        path = str(inv.get("Path"))
        if str(inv.get("ItemType")).lower() != "directory":
            raise PSError("only directories", "InvalidArgument")
        if self.host.exists(path) and not inv.switch("Force"):
            raise PSError(f"An item with the specified name {path} already exists.",
                          "ResourceExists", "DirectoryExist")  # fmt: skip
        self.host.mkdir(path)
        return [PSObject({"FullName": path})]

    def test_path(self, inv: Invocation) -> list[Any]:
        return [self.host.exists(str(inv.get("LiteralPath", inv.get("Path"))))]

    def content(self, inv: Invocation, append: bool) -> list[Any]:
        if str(inv.get("Encoding", "")).lower() != "byte":
            raise PSError("only -Encoding Byte is modelled", "InvalidArgument")
        value = inv.get("Value")
        data = bytes(value) if isinstance(value, (bytes, list)) else str(value).encode()
        self.host.write(str(inv.get("LiteralPath", inv.get("Path"))), data, append)
        return []

    def get_filehash(self, inv: Invocation) -> list[Any]:
        path = str(inv.get("LiteralPath", inv.get("Path")))
        digest = hashlib.sha256(self.host.read(path)).hexdigest().upper()
        return [PSObject({"Algorithm": "SHA256", "Hash": digest, "Path": path})]

    def move_item(self, inv: Invocation) -> list[Any]:
        source, dest = str(inv.get("LiteralPath", inv.get("Path"))), str(inv.get("Destination"))
        data = self.host.read(source)
        if self.host.exists(dest) and not inv.switch("Force"):
            raise PSError("Cannot create a file when that file already exists.", "WriteError")
        self.host.remove(source)
        self.host.write(dest, data)
        return []

    def remove_item(self, inv: Invocation) -> list[Any]:
        path = str(inv.get("LiteralPath", inv.get("Path")))
        self.host.remove(path)
        return []

    # --- disks --------------------------------------------------------------------------------

    def new_vhd(self, inv: Invocation) -> list[Any]:
        path, parent = str(inv.get("Path")), inv.get("ParentPath")
        ext = ntpath.splitext(path)[1].lower()
        if ext not in (".vhd", ".vhdx"):
            raise PSError(f"Failed to create the virtual hard disk. The format of '{path}' is "
                          "not supported.", "InvalidArgument", "InvalidParameter")  # fmt: skip
        if self.host.exists(path):
            raise PSError(f"Failed to create the virtual hard disk. The file '{path}' already "
                          "exists.", "ResourceExists", "ObjectAlreadyExists")  # fmt: skip
        if not inv.switch("Differencing") or parent is None:
            raise PSError("only differencing disks are modelled", "InvalidArgument")
        if not self.host.exists(str(parent)):
            raise PSError(f"Failed to create the virtual hard disk. The system cannot find the "
                          f"file specified: '{parent}'.", "ObjectNotFound", "ObjectNotFound")  # fmt: skip
        if ntpath.splitext(str(parent))[1].lower() != ext:
            raise PSError("The format of the differencing disk must match its parent's.",
                          "InvalidArgument", "InvalidParameter")  # fmt: skip
        header = (b"vhdxfile" if ext == ".vhdx" else b"conectix") + json.dumps(
            {"parent": str(parent)}).encode()  # fmt: skip
        self.host.write(path, header)
        return [PSObject({"Path": path, "ParentPath": parent, "VhdType": 4})]

    # --- VMs ------------------------------------------------------------------------------------

    def get_vm(self, inv: Invocation) -> list[Any]:
        if not inv.has("Name") and not inv.get("__positional"):
            return list(self.host.vms)
        return list(self.vms(inv))

    def new_vm(self, inv: Invocation) -> list[Any]:
        name = str(inv.get("Name"))
        gen = int(inv.get("Generation", 1))
        if gen not in (1, 2):
            raise PSError(f"Cannot validate argument on parameter 'Generation'. The {gen} "
                          "argument is greater than the maximum allowed range of 2.",
                          "InvalidData", "ParameterArgumentValidationError")  # fmt: skip
        memory = int(inv.get("MemoryStartupBytes", 1 << 30))
        if memory % (2 << 20):
            raise PSError(f"'{name}' failed to modify device 'Memory'. Memory must be a "
                          "multiple of 2 MB.", "InvalidArgument", "InvalidParameter")  # fmt: skip
        vhd = inv.get("VHDPath")
        if vhd is not None and not self.host.exists(str(vhd)):
            raise PSError(f"The system cannot find the file specified: '{vhd}'.",
                          "ObjectNotFound", "ObjectNotFound")  # fmt: skip
        vm = VM(name, gen, memory, str(inv.get("Path", "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V")),
                self.host.name)  # fmt: skip
        if vhd is not None:
            vm.disks.append(str(vhd))
        vm.adapters.append(
            Adapter("Network Adapter", "000000000000", str(inv.get("SwitchName", "")))
        )
        self.host.vms.append(vm)
        return [vm]

    def set_vm(self, inv: Invocation) -> list[Any]:
        for vm in self.vms(inv):
            if inv.has("Notes"):
                vm.notes = str(inv.get("Notes"))
            if inv.has("ProcessorCount"):
                self._processors(vm, int(inv.get("ProcessorCount")))
        return []

    def _processors(self, vm: VM, count: int) -> None:
        if vm.state != "Off":
            raise PSError(f"'{vm.name}' failed to modify device 'Processor'. The virtual "
                          "processor count cannot be changed while the virtual machine is "
                          "running.", "InvalidOperation", "InvalidState")  # fmt: skip
        if not 1 <= count <= self.host.logical_processors:
            raise PSError(f"'{vm.name}' failed to modify device 'Processor'. The number of "
                          f"virtual processors ({count}) exceeds the number of logical "
                          f"processors ({self.host.logical_processors}).",
                          "InvalidArgument", "InvalidParameter")  # fmt: skip
        vm.processors = count

    def set_vmprocessor(self, inv: Invocation) -> list[Any]:
        for vm in self.vms(inv, "VMName"):
            self._processors(vm, int(inv.get("Count")))
        return []

    def set_vmmemory(self, inv: Invocation) -> list[Any]:
        for vm in self.vms(inv, "VMName"):
            if vm.state != "Off":
                raise PSError(f"'{vm.name}' failed to modify device 'Memory'. Static memory "
                              "cannot be changed while the virtual machine is running.",
                              "InvalidOperation", "InvalidState")  # fmt: skip
            if inv.has("StartupBytes"):
                vm.memory = int(inv.get("StartupBytes"))
            if inv.has("DynamicMemoryEnabled"):
                vm.dynamic_memory = bool(inv.get("DynamicMemoryEnabled"))
        return []

    def remove_vm(self, inv: Invocation) -> list[Any]:
        for vm in self.vms(inv):
            if vm.state != "Off":
                raise failed_state(vm, "delete")
            self.host.vms.remove(vm)
        return []

    # --- power ---------------------------------------------------------------------------------

    def start_vm(self, inv: Invocation) -> list[Any]:
        for vm in self.vms(inv):
            if vm.state == "Saved":
                vm.state = "Running"
                continue
            if vm.state != "Off":
                raise failed_state(vm)
            free = self.host.memory_capacity - self.host.used_memory()
            if vm.memory > free:
                raise PSError(f"'{vm.name}' could not initialize.\nNot enough memory in the "
                              f"system to start the virtual machine {vm.name}.",
                              "ResourceUnavailable", "OutOfMemory")  # fmt: skip
            for disk in vm.disks + vm.dvds:
                if not self.host.exists(disk):
                    raise PSError(f"'{vm.name}' failed to start. The system cannot find the "
                                  f"file specified: '{disk}'.", "ObjectNotFound", "ObjectNotFound")  # fmt: skip
            vm.state = "Running"
            vm.boots += 1
        return []

    def stop_vm(self, inv: Invocation) -> list[Any]:
        for vm in self.vms(inv):
            if vm.state == "Off":
                inv.warnings.append("The virtual machine is already in the specified state.")
            elif inv.switch("TurnOff") and vm.state != "Saved":
                vm.state = "Off"
            elif vm.state != "Running":
                raise failed_state(vm)
            elif not vm.guest_shutdown:
                raise PSError(f"'{vm.name}' failed to shut down. The device is not ready for "
                              "use.", "NotSpecified", "OperationFailed")  # fmt: skip
            else:
                vm.state = "Off"
        return []

    def restart_vm(self, inv: Invocation) -> list[Any]:
        """A hard restart (Hyper-V's Restart-VM has no guest restart)."""
        for vm in self.vms(inv):
            if vm.state != "Running":
                raise failed_state(vm)
            vm.resets += 1
        return []

    def remove_vmsavedstate(self, inv: Invocation) -> list[Any]:
        for vm in self.vms(inv, "VMName"):
            if vm.state != "Saved":
                raise failed_state(vm, "delete the saved state")
            vm.state = "Off"
        return []

    def _transition(self, inv: Invocation, allowed: tuple[str, ...], to: str) -> list[Any]:
        for vm in self.vms(inv):
            if vm.state not in allowed:
                raise failed_state(vm)
            vm.state = to
        return []

    # --- devices ------------------------------------------------------------------------------

    def get_vmnetworkadapter(self, inv: Invocation) -> list[Any]:
        return [a for vm in self.vms(inv, "VMName") for a in vm.adapters]

    def add_vmnetworkadapter(self, inv: Invocation) -> list[Any]:
        mac = str(inv.get("StaticMacAddress", "000000000000")).upper()
        if not re.fullmatch(r"[0-9A-F]{12}", mac):
            raise PSError(f"Invalid MAC address '{mac}'.", "InvalidArgument", "InvalidParameter")
        for vm in self.vms(inv, "VMName"):
            if vm.state != "Off" and vm.generation == 1:
                raise failed_state(vm, "add device 'Synthetic Ethernet Port'")
            vm.adapters.append(Adapter(str(inv.get("Name", "Network Adapter")), mac,
                                       str(inv.get("SwitchName", ""))))  # fmt: skip
        return []

    def _adapters(self, inv: Invocation) -> list[tuple[VM, Adapter]]:
        if inv.input and all(isinstance(i, Adapter) for i in inv.input):
            return [(vm, a) for vm in self.host.vms for a in vm.adapters if a in inv.input]
        name = inv.get("Name", inv.get("VMNetworkAdapterName"))
        found = [(vm, a) for vm in self.vms(inv, "VMName") for a in vm.adapters
                 if name is None or wildcard(str(name)).fullmatch(a.name)]  # fmt: skip
        if not found:
            raise PSError(f"No network adapter is found with the given name '{name}'.",
                          "ObjectNotFound", "ObjectNotFound")  # fmt: skip
        return found

    def remove_vmnetworkadapter(self, inv: Invocation) -> list[Any]:
        for vm, adapter in self._adapters(inv):
            vm.adapters.remove(adapter)
        return []

    def connect_vmnetworkadapter(self, inv: Invocation) -> list[Any]:
        switch = str(inv.get("SwitchName"))
        if switch.lower() not in (s.lower() for s in self.host.switches):
            raise PSError(f"Hyper-V was unable to find a virtual switch with name \"{switch}\".",
                          "InvalidArgument", "InvalidParameter")  # fmt: skip
        for _, adapter in self._adapters(inv):
            adapter.switch = switch
        return []

    def set_vmnetworkadaptervlan(self, inv: Invocation) -> list[Any]:
        for _, adapter in self._adapters(inv):
            adapter.vlan = int(inv.get("VlanId"))
        return []

    def add_vmdvddrive(self, inv: Invocation) -> list[Any]:
        path = str(inv.get("Path"))
        if not self.host.exists(path):
            raise PSError(f"Failed to add device 'Virtual CD/DVD Disk'. The system cannot "
                          f"find the file specified: '{path}'.", "ObjectNotFound", "ObjectNotFound")  # fmt: skip
        for vm in self.vms(inv, "VMName"):
            vm.dvds.append(path)
        return []

    # --- migration -----------------------------------------------------------------------------

    def move_vm(self, inv: Invocation) -> list[Any]:
        vm = self.one_vm(inv)
        dest = self.world.hosts.get(str(inv.get("DestinationHost")).lower())
        if dest is None or dest is self.host:
            raise PSError(f"The operation failed because the destination host "
                          f"'{inv.get('DestinationHost')}' could not be reached.",
                          "ConnectionError", "OperationFailed")  # fmt: skip
        if not (self.host.migration_enabled and dest.migration_enabled):
            raise PSError(f"Virtual machine migration operation for '{vm.name}' failed: the "
                          "Virtual Machine Management Service is not configured to accept "
                          "migrations.", "InvalidOperation", "OperationFailed")  # fmt: skip
        if not inv.switch("IncludeStorage"):
            raise PSError("The virtual machine's storage is not on shared storage: use "
                          "-IncludeStorage.", "InvalidOperation", "OperationFailed")  # fmt: skip
        for adapter in vm.adapters:
            if adapter.switch and adapter.switch.lower() not in (s.lower() for s in dest.switches):
                raise PSError(f"Could not find Ethernet switch '{adapter.switch}' on "
                              f"'{dest.name}'.", "ObjectNotFound", "OperationFailed")  # fmt: skip
        for disk in vm.disks:
            parent = self.host.vhd_parent(disk)
            if parent and not dest.exists(parent):
                raise PSError(f"The parent virtual hard disk '{parent}' of '{disk}' was not "
                              f"found on '{dest.name}'.", "ObjectNotFound", "OperationFailed")  # fmt: skip
        if (
            vm.state in ("Running", "Paused")
            and vm.memory > dest.memory_capacity - dest.used_memory()
        ):
            raise PSError(f"Not enough memory on '{dest.name}' to move '{vm.name}'.",
                          "ResourceUnavailable", "OutOfMemory")  # fmt: skip
        target = str(inv.get("DestinationStoragePath"))
        dest.mkdir(target)
        moved = {}
        for path in vm.disks + vm.dvds:
            new = ntpath.join(target, ntpath.basename(path))
            dest.files[key(new)] = (new, self.host.read(path))
            moved[path] = new
        for path in moved:
            self.host.files.pop(key(path), None)
        vm.disks = [moved[p] for p in vm.disks]
        vm.dvds = [moved[p] for p in vm.dvds]
        vm.path, vm.host = target, dest.name
        self.host.vms.remove(vm)
        dest.vms.append(vm)
        return []

    # --- checkpoints and exports --------------------------------------------------------------

    def open_read(self, path: Any) -> FileStream:
        return FileStream(self.host.read(str(path)))

    def new_object(self, inv: Invocation) -> list[Any]:
        type_name = str(inv.get("TypeName")).lower().removeprefix("system.")
        if type_name != "io.binaryreader":
            raise PSError(f"Cannot find type [{inv.get('TypeName')}]: verify that the assembly "
                          "containing this type is loaded.", "InvalidType", "TypeNotFound")  # fmt: skip
        stream = inv.get("ArgumentList")
        if not isinstance(stream, FileStream):
            raise PSError("BinaryReader needs a stream.", "InvalidArgument")
        return [BinaryReader(stream)]

    def get_item(self, inv: Invocation) -> list[Any]:
        path = str(inv.get("LiteralPath", inv.get("Path")))
        return [PSObject({"FullName": path, "Length": len(self.host.read(path))})]

    def get_vmharddiskdrive(self, inv: Invocation) -> list[Any]:
        return [PSObject({"VMName": vm.name, "Path": d}) for vm in self.vms(inv, "VMName")
                for d in vm.disks]  # fmt: skip

    def checkpoint_vm(self, inv: Invocation) -> list[Any]:
        name = str(inv.get("SnapshotName", "checkpoint"))
        for vm in self.vms(inv):
            pairs = []
            for disk in vm.disks:
                stem, ext = ntpath.splitext(disk)
                child = f"{stem}_{str(uuid.uuid4()).upper()}.a{ext.lstrip('.')}"
                self.host.write(child, b"vhdxfile" + json.dumps({"parent": disk}).encode())
                pairs.append((disk, child))
            vm.disks = [child for _, child in pairs]
            vm.checkpoints[name] = pairs
        return []

    def remove_vmsnapshot(self, inv: Invocation) -> list[Any]:
        name = str(inv.get("Name"))
        for vm in self.vms(inv, "VMName"):
            pairs = vm.checkpoints.pop(name, None)
            if pairs is None:
                raise PSError(f"Hyper-V was unable to find a checkpoint named \"{name}\" of "
                              f"'{vm.name}'.", "ObjectNotFound", "ObjectNotFound")  # fmt: skip
            for disk, child in pairs:  # the checkpoint's changes merged back into its parent
                vm.disks = [disk if d == child else d for d in vm.disks]
                self.host.files.pop(key(child), None)
        return []

    def base_data(self, path: str) -> bytes:
        """A disk's content with its parents merged in: its base image's bytes (writes of
        guests are not modelled)."""
        while True:
            parent = self.host.vhd_parent(path) if path.lower().endswith(("vhdx", "vhd")) else None
            if not parent:
                return self.host.read(path)
            path = parent

    def convert_vhd(self, inv: Invocation) -> list[Any]:
        path, dest = str(inv.get("Path")), str(inv.get("DestinationPath"))
        self.host.check_not_in_use(path)
        if self.host.exists(dest):
            raise PSError(f"Failed to convert the virtual disk. The file '{dest}' already "
                          "exists.", "ResourceExists", "ObjectAlreadyExists")  # fmt: skip
        if str(inv.get("VHDType", "")).lower() not in ("dynamic", "fixed"):
            raise PSError("Convert-VHD needs -VHDType Dynamic or Fixed.", "InvalidArgument")
        self.host.write(dest, self.base_data(path))
        return []

    # --- the table ---------------------------------------------------------------------------

    def statics(self) -> dict[tuple[str, str], Any]:
        """The .NET static members scripts call that reach this host's files."""
        return {("io.file", "openread"): self.open_read}

    def cmdlets(self) -> dict[str, CmdletSpec]:
        def spec(fn: Any, params: str, switches: str = "") -> CmdletSpec:
            sw = set(switches.lower().split())
            return CmdletSpec(fn, set(params.lower().split()) | sw, sw)

        def lock(fn: Any) -> Any:
            def run(inv: Invocation) -> list[Any]:
                with self.world.lock:
                    return list(fn(inv))

            return run

        table = {
            "Get-VMHost": spec(self.get_vmhost, ""),
            "Get-Volume": spec(self.get_volume, "FilePath"),
            "Get-CimInstance": spec(self.get_ciminstance, "ClassName"),
            "Get-VMSwitch": spec(self.get_vmswitch, "Name"),
            "New-Item": spec(self.new_item, "ItemType Path", "Force"),
            "Test-Path": spec(self.test_path, "LiteralPath Path"),
            "Set-Content": spec(
                lambda i: self.content(i, False), "LiteralPath Path Value Encoding"
            ),
            "Add-Content": spec(lambda i: self.content(i, True), "LiteralPath Path Value Encoding"),
            "Get-FileHash": spec(self.get_filehash, "LiteralPath Path Algorithm"),
            "Move-Item": spec(self.move_item, "LiteralPath Path Destination", "Force"),
            "Remove-Item": spec(self.remove_item, "LiteralPath Path", "Recurse Force"),
            "New-VHD": spec(self.new_vhd, "Path ParentPath SizeBytes", "Differencing"),
            "Get-VM": spec(self.get_vm, "Name"),
            "New-VM": spec(
                self.new_vm, "Name Generation MemoryStartupBytes VHDPath Path SwitchName", "NoVHD"
            ),
            "Set-VM": spec(self.set_vm, "Name VM Notes ProcessorCount AutomaticStopAction"),
            "Set-VMProcessor": spec(self.set_vmprocessor, "VMName VM Count"),
            "Set-VMMemory": spec(self.set_vmmemory, "VMName VM StartupBytes DynamicMemoryEnabled"),
            "Remove-VM": spec(self.remove_vm, "Name VM", "Force"),
            "Start-VM": spec(self.start_vm, "Name VM"),
            "Stop-VM": spec(self.stop_vm, "Name VM", "Force TurnOff Save"),
            "Restart-VM": spec(self.restart_vm, "Name VM For Delay Timeout", "Force Wait"),
            "Remove-VMSavedState": spec(self.remove_vmsavedstate, "VMName VM"),
            "Suspend-VM": spec(lambda i: self._transition(i, ("Running",), "Paused"), "Name VM"),
            "Resume-VM": spec(lambda i: self._transition(i, ("Paused",), "Running"), "Name VM"),
            "Save-VM": spec(
                lambda i: self._transition(i, ("Running", "Paused"), "Saved"), "Name VM"
            ),
            "Get-VMNetworkAdapter": spec(self.get_vmnetworkadapter, "VMName VM Name"),
            "Add-VMNetworkAdapter": spec(
                self.add_vmnetworkadapter, "VMName VM Name SwitchName StaticMacAddress"
            ),
            "Remove-VMNetworkAdapter": spec(self.remove_vmnetworkadapter, "VMName VM Name"),
            "Connect-VMNetworkAdapter": spec(
                self.connect_vmnetworkadapter, "VMName VM Name SwitchName"
            ),
            "Set-VMNetworkAdapterVlan": spec(
                self.set_vmnetworkadaptervlan, "VMName VMNetworkAdapterName VlanId", "Access"
            ),
            "Add-VMDvdDrive": spec(self.add_vmdvddrive, "VMName VM Path"),
            "New-Object": spec(self.new_object, "TypeName ArgumentList"),
            "Get-Item": spec(self.get_item, "LiteralPath Path"),
            "Get-VMHardDiskDrive": spec(self.get_vmharddiskdrive, "VMName VM"),
            "Checkpoint-VM": spec(self.checkpoint_vm, "Name VM SnapshotName"),
            "Remove-VMSnapshot": spec(self.remove_vmsnapshot, "VMName VM Name"),
            "Convert-VHD": spec(self.convert_vhd, "Path DestinationPath VHDType"),
            "Move-VM": spec(
                self.move_vm, "Name VM DestinationHost DestinationStoragePath", "IncludeStorage"
            ),
        }
        for s in table.values():
            s.run = lock(s.run)
        return BASE_CMDLETS | table
