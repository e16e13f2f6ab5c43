"""Finding hvmesh's VMs in vCenter: every VM under the datacenter's VM folder, with its tag and the ESXi host it runs on, in one PropertyCollector call.

A VM belongs to an agent by the host it runs on (runtime.host), not by the resource pool
or host lists that hold it: those are updated lazily by some vCenters after a vMotion,
while runtime.host always is. Everything here runs on a session's worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from hvmesh.agents.vmware.vm_spec import SERVER_ID_KEY

#: What is read of each VM when finding them.
FIND_PATHS = ["config.extraConfig", "runtime.host"]


@dataclass
class FoundVm:
    """A tagged VM and the moref id of the ESXi host it runs on ("" when it has none)."""

    vm: Any
    host: str


def server_id_of(extra_config: Any) -> str | None:
    """The server id a VM's extraConfig carries, if it carries one."""
    for opt in extra_config or []:
        if opt.key == SERVER_ID_KEY:
            return str(opt.value)
    return None


def folder_vms(folder: Any, paths: list[str]) -> Any:
    """A filter spec reaching every VM under `folder` (sub-folders too), reading `paths`
    of each: traversal specs, so VMs made later are in it as well."""
    PC = vmodl.query.PropertyCollector
    to_children = PC.TraversalSpec(name="children", type=vim.Folder, path="childEntity", skip=False)
    to_children.selectSet = [PC.SelectionSpec(name="children")]
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=folder, skip=True, selectSet=[to_children])],
        propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
    )


def host_id(value: Any) -> str:
    """The moref id of a runtime.host value ("" for none)."""
    return str(value._moId) if value is not None else ""


def tagged_vms(si: Any, folder: Any) -> dict[str, list[FoundVm]]:
    """{server id: its VMs} of every tagged VM under `folder`, with their hosts, read with
    one RetrievePropertiesEx (and its continuation pages). A server can have two VMs for
    a moment: the source and the copy of a move."""
    PC = vmodl.query.PropertyCollector
    collector = si.content.propertyCollector
    found: dict[str, list[FoundVm]] = {}
    result = collector.RetrievePropertiesEx([folder_vms(folder, FIND_PATHS)], PC.RetrieveOptions())
    while result is not None:
        for obj in result.objects:
            props = {p.name: p.val for p in obj.propSet}
            sid = server_id_of(props.get("config.extraConfig"))
            if sid is not None:
                found.setdefault(sid, []).append(
                    FoundVm(obj.obj, host_id(props.get("runtime.host")))
                )
        token = result.token
        result = collector.ContinueRetrievePropertiesEx(token) if token else None
    return found


def in_scope(found: dict[str, list[FoundVm]], hosts: set[str]) -> dict[str, Any]:
    """{server id: VM} of the VMs that run on one of `hosts` (moref ids)."""
    out: dict[str, Any] = {}
    for sid, vms in found.items():
        for f in vms:
            if f.host in hosts:
                out[sid] = f.vm
    return out
