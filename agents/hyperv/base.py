"""The Hyper-V driver's foundation: its WinRM connection, running scripts and reading their JSON, finding a server's VM, and the Get-VM poll that reports power changes.

Each server is one VM named by its server id; its Notes start with `hvmesh:<server id>`
(the server's name on the next line), which is how the driver knows its own VMs from
anything else on the host. Hyper-V has no push events over WinRM, so a background task
runs Get-VM every [hyperv] power_poll_interval and hands each change of a VM's power
state to the power listener: a change from what the last poll saw or get_info answered
(what the runtime reported after a step), so a VM turned off on the host right after an
action is reported even when the last poll saw it off before the action.
"""

from __future__ import annotations

import asyncio
import json
import ntpath
from typing import Any

from hvmesh.agents.driver import ComputeDriver, DriverError
from hvmesh.agents.hyperv import scripts
from hvmesh.agents.hyperv.transport import CommandFailed, WinrmConnection
from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.protocol import states
from hvmesh.core.protocol.records import Vif
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

NOTES_PREFIX = "hvmesh:"
#: Hyper-V's VMState values (ConvertTo-Json writes the number) and names.
VM_STATES: dict[int, str] = {
    2: "Running",
    3: "Off",
    4: "Stopping",
    6: "Saved",
    9: "Paused",
    10: "Starting",
    11: "Reset",
    32773: "Saving",
    32776: "Pausing",
    32777: "Resuming",
    32779: "FastSaved",
    32780: "FastSaving",
}
POWER_STATES: dict[str, int] = {
    "Running": states.RUNNING,
    "Off": states.SHUTDOWN,
    "Saved": states.POWER_SUSPENDED,
    "FastSaved": states.POWER_SUSPENDED,
    "Paused": states.POWER_PAUSED,
}
#: Hyper-V's words for a VM it does not have.
NOT_FOUND = ("unable to find a virtual machine", "cannot find a virtual machine")


def state_name(value: Any) -> str:
    """A VMState as its name, whether ConvertTo-Json wrote the number or the name."""
    if isinstance(value, int):
        return VM_STATES.get(value, str(value))
    return str(value)


def server_id_of(notes: Any) -> str | None:
    """The server id a VM's Notes carry, or None for a VM hvmesh did not make."""
    if not isinstance(notes, str) or not notes.startswith(NOTES_PREFIX):
        return None
    return notes[len(NOTES_PREFIX) :].splitlines()[0].strip() or None


def notes_for(server_id: str, name: str) -> str:
    return f"{NOTES_PREFIX}{server_id}\n{name}"


def objects(stdout: str) -> list[Any]:
    """The JSON a script wrote, one line per ConvertTo-Json; arrays flattened."""
    out: list[Any] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise DriverError(f"the host answered what is not JSON: {line[:200]!r}") from None
        out.extend(value if isinstance(value, list) else [value])
    return out


class HypervBase(ComputeDriver):
    def __init__(self, host: str, config: Config) -> None:
        super().__init__(host, config)
        self.cfg = config.hyperv
        probe = min(config.compute.heartbeat_interval, 10.0)
        self.conn = WinrmConnection(self.cfg, probe_interval=probe)
        self._powers: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None
        self.switches: list[str] = []

    # --- running scripts ------------------------------------------------------------------

    async def ps(self, body: str, what: str, **values: Any) -> list[Any]:
        """Run one of scripts.py's bodies with `values`; the objects it wrote."""
        return objects(await self.conn.run(scripts.build(body, **values), what))

    async def vm_ps(self, body: str, what: str, server_id: str, **values: Any) -> list[Any]:
        """As ps, on the server's VM: DriverError naming the server when it is not here."""
        try:
            return await self.ps(body, what, name=server_id, **values)
        except CommandFailed as exc:
            if any(words in str(exc) for words in NOT_FOUND):
                raise DriverError(f"instance {server_id} not found on {self.host}") from None
            raise

    # --- where things are -------------------------------------------------------------------

    def instance_dir(self, server_id: str) -> str:
        return ntpath.join(self.cfg.vhd_path, server_id)

    def switch_for(self, vif: Vif) -> str:
        """The virtual switch of the port's physical network."""
        for entry in self.config.compute.physical_network_mappings:
            physnet, sep, switch = entry.partition(":")
            if not sep or not physnet or not switch:
                raise DriverError(
                    f"[compute] physical_network_mappings: {entry!r} is not PHYSNET:SWITCH"
                )
            if physnet == vif.physical_network:
                return switch
        if self.cfg.switch:
            return self.cfg.switch
        raise DriverError(
            f"physical network {vif.physical_network!r} of port {vif.port_id} has no virtual "
            "switch here: add it to [compute] physical_network_mappings or set [hyperv] switch"
        )

    # --- connection ---------------------------------------------------------------------------

    async def init_host(self) -> None:
        await self.conn.open()
        found = await self.ps(
            scripts.PREPARE_HOST,
            "preparing the host's folders",
            vhd_path=self.cfg.vhd_path,
            image_cache_path=self.cfg.image_cache_path,
        )
        self.switches = [str(s.get("Name")) for s in found if isinstance(s, dict)]
        self._powers = {sid: power for sid, (_, power) in (await self.vms()).items()}
        self._poller = asyncio.get_running_loop().create_task(self._poll_power())
        LOG.info("hyperv.init_host", host=self.host, hyperv=self.cfg.host, switches=self.switches)

    async def cleanup_host(self) -> None:
        await stop_tasks([self._poller])
        await self.conn.close()

    def healthy(self) -> bool:
        return self.conn.healthy

    # --- finding VMs ------------------------------------------------------------------------

    async def vms(self) -> dict[str, tuple[str, int]]:
        """{server id: (VM state name, power state)} of the VMs hvmesh made on the host."""
        found: dict[str, tuple[str, int]] = {}
        for vm in await self.ps(scripts.LIST_VMS, "listing VMs"):
            sid = server_id_of(vm.get("Notes")) if isinstance(vm, dict) else None
            if sid is not None and sid == vm.get("Name"):
                name = state_name(vm.get("State"))
                found[sid] = (name, POWER_STATES.get(name, states.NOSTATE))
        return found

    async def vm_state(self, server_id: str) -> str | None:
        """The VM's state name (Running, Off, Saved, Paused...), or None when not here."""
        got = (await self.vms()).get(server_id)
        return None if got is None else got[0]

    async def require_state(self, server_id: str) -> str:
        state = await self.vm_state(server_id)
        if state is None:
            raise DriverError(f"instance {server_id} not found on {self.host}")
        return state

    # --- power polling ------------------------------------------------------------------------

    async def _poll_power(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.power_poll_interval)
            if not self.conn.healthy:
                continue
            try:
                await self.poll_power_once()
            except DriverError:
                continue  # unreachable: the connection reconnects; the next poll tells
            except Exception as exc:  # a report that could not be sent: the next poll retries
                LOG.warning("hyperv.power_poll_failed", host=self.host, error=repr(exc))

    async def poll_power_once(self) -> None:
        """One Get-VM: each VM whose power state changed since the last look is reported."""
        now = {sid: power for sid, (_, power) in (await self.vms()).items()}
        changed = {sid: p for sid, p in now.items() if self._powers.get(sid) != p}
        for sid, power in changed.items():
            LOG.info("hyperv.power_changed", server=sid, power_state=power)
            await self.emit_power(sid, power)
            self._powers[sid] = power  # reported: a change not sent is sent by the next poll
        for sid in set(self._powers) - set(now):
            del self._powers[sid]
