"""The PowerShell the Hyper-V driver runs: fixed scripts of named Hyper-V cmdlets, each value passed as data.

A script is one of the constant bodies below, preceded by a prelude that decodes its
arguments: the values are serialized to JSON, the JSON to base64, and the script reads
them back with [Convert]::FromBase64String and ConvertFrom-Json into `$a`. Base64 has
no quote, so nothing a value holds (a server's name with quotes and semicolons
included) ever becomes script text; the bodies refer to `$a.<field>` only. Every script
stops at the first error ($ErrorActionPreference = 'Stop') and writes what it reads as
one `ConvertTo-Json -Compress` line per object.
"""

from __future__ import annotations

import base64
import json
from typing import Any

PRELUDE = (
    "$ErrorActionPreference = 'Stop'\n"
    "$ProgressPreference = 'SilentlyContinue'\n"
    "$a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{data}')) | "
    "ConvertFrom-Json\n"
)


def build(body: str, **values: Any) -> str:
    """The script running `body` with `values` as `$a`: the values as base64 JSON data."""
    data = base64.b64encode(json.dumps(values).encode("utf-8")).decode("ascii")
    return PRELUDE.replace("{data}", data) + body


# --- the host -------------------------------------------------------------------------------

HOST_INFO = """\
Get-VMHost | Select-Object ComputerName, LogicalProcessorCount, MemoryCapacity | ConvertTo-Json -Compress
Get-Volume -FilePath $a.vhd_path | Select-Object Size, SizeRemaining | ConvertTo-Json -Compress
Get-CimInstance -ClassName Win32_OperatingSystem | Select-Object Version, OSArchitecture | ConvertTo-Json -Compress
"""

PREPARE_HOST = """\
New-Item -ItemType Directory -Force -Path $a.vhd_path | Out-Null
New-Item -ItemType Directory -Force -Path $a.image_cache_path | Out-Null
Get-VMSwitch | Select-Object Name | ConvertTo-Json -Compress
"""

LIST_VMS = """\
Get-VM | Select-Object Name, State, Notes | ConvertTo-Json -Compress
"""

VM_DETAILS = """\
Get-VM -Name $a.name | Select-Object Name, State, Notes, ProcessorCount, MemoryStartup, ComputerName | ConvertTo-Json -Compress
Get-VMNetworkAdapter -VMName $a.name | Select-Object Name, MacAddress, SwitchName | ConvertTo-Json -Compress
"""

# --- files (image cache, config drive) ----------------------------------------------------

TEST_PATH = """\
Test-Path -LiteralPath $a.path | ConvertTo-Json -Compress
"""

WRITE_FIRST_CHUNK = """\
Set-Content -LiteralPath $a.path -Value ([Convert]::FromBase64String($a.data)) -Encoding Byte
"""

APPEND_CHUNK = """\
Add-Content -LiteralPath $a.path -Value ([Convert]::FromBase64String($a.data)) -Encoding Byte
"""

FINISH_UPLOAD = """\
Get-FileHash -LiteralPath $a.partial -Algorithm SHA256 | Select-Object Hash | ConvertTo-Json -Compress
"""

MOVE_FILE = """\
Move-Item -LiteralPath $a.source -Destination $a.dest -Force
"""

REMOVE_PATH = """\
Remove-Item -LiteralPath $a.path -Recurse -Force -ErrorAction SilentlyContinue
"""

# --- instances ------------------------------------------------------------------------------

CREATE_VM = """\
New-Item -ItemType Directory -Force -Path $a.dir | Out-Null
New-VHD -Path $a.disk -ParentPath $a.base -Differencing | Out-Null
New-VM -Name $a.name -Generation $a.generation -MemoryStartupBytes $a.memory -VHDPath $a.disk -Path $a.dir | Out-Null
Set-VMProcessor -VMName $a.name -Count $a.vcpus
Set-VMMemory -VMName $a.name -StartupBytes $a.memory -DynamicMemoryEnabled $false
Set-VM -Name $a.name -Notes $a.notes -AutomaticStopAction TurnOff
Get-VMNetworkAdapter -VMName $a.name | Remove-VMNetworkAdapter
"""

ADD_NIC = """\
Add-VMNetworkAdapter -VMName $a.name -Name $a.nic -StaticMacAddress $a.mac
Connect-VMNetworkAdapter -VMName $a.name -Name $a.nic -SwitchName $a.switch
"""

SET_VLAN = """\
Set-VMNetworkAdapterVlan -VMName $a.name -VMNetworkAdapterName $a.nic -Access -VlanId $a.vlan
"""

REMOVE_NIC = """\
Remove-VMNetworkAdapter -VMName $a.name -Name $a.nic
"""

ADD_DVD = """\
Add-VMDvdDrive -VMName $a.name -Path $a.iso
"""

REMOVE_VM = """\
Remove-VM -Name $a.name -Force
"""

RESIZE = """\
Set-VMProcessor -VMName $a.name -Count $a.vcpus
Set-VMMemory -VMName $a.name -StartupBytes $a.memory
"""

# --- power ------------------------------------------------------------------------------------

START = "Start-VM -Name $a.name\n"
SHUTDOWN = "Stop-VM -Name $a.name -Force\n"
TURN_OFF = "Stop-VM -Name $a.name -TurnOff -Force\n"
RESET = "Restart-VM -Name $a.name -Force\n"
DISCARD_SAVED = "Remove-VMSavedState -VMName $a.name\n"
PAUSE = "Suspend-VM -Name $a.name\n"
UNPAUSE = "Resume-VM -Name $a.name\n"
SAVE = "Save-VM -Name $a.name\n"

# --- snapshots ------------------------------------------------------------------------------

ROOT_DISK = """\
Get-VMHardDiskDrive -VMName $a.name | Select-Object Path | ConvertTo-Json -Compress
"""

CHECKPOINT = "Checkpoint-VM -Name $a.name -SnapshotName $a.snapshot\n"
REMOVE_CHECKPOINT = "Remove-VMSnapshot -VMName $a.name -Name $a.snapshot\n"

EXPORT_DISK = """\
Convert-VHD -Path $a.disk -DestinationPath $a.dest -VHDType Dynamic
"""

FILE_SIZE = """\
Get-Item -LiteralPath $a.path | Select-Object Length | ConvertTo-Json -Compress
"""

READ_CHUNK = """\
$f = [IO.File]::OpenRead($a.path)
$null = $f.Seek($a.offset, [IO.SeekOrigin]::Begin)
$r = New-Object -TypeName 'System.IO.BinaryReader' -ArgumentList $f
$b = $r.ReadBytes($a.size)
$f.Close()
[Convert]::ToBase64String($b) | ConvertTo-Json -Compress
"""

# --- live migration ---------------------------------------------------------------------------

MIGRATION_READY = """\
Get-VMHost | Select-Object ComputerName, VirtualMachineMigrationEnabled | ConvertTo-Json -Compress
"""

MOVE_VM = """\
Move-VM -Name $a.name -DestinationHost $a.dest -IncludeStorage -DestinationStoragePath $a.dir
"""
