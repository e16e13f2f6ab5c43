"""Power-state sync: the hypervisor's truth, as agents report it, applied to server records.

Agents report every instance's power state now and then ("power" events). The
conductor records it; a server that stopped behind hvmesh's back (shut down from
inside the guest, crashed, gone from the hypervisor) becomes SHUTOFF, as Nova's
_sync_power_states does. A server in the middle of an action is left alone: the action
reports its own outcome.
"""

from __future__ import annotations

import msgspec

from hvmesh.core import log
from hvmesh.core.bus import notify
from hvmesh.core.conductor.context import ConductorContext
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import AgentEvent
from hvmesh.core.protocol.records import Server

LOG = log.get_logger(__name__)

_OFF = (S.SHUTDOWN, S.CRASHED, S.NOSTATE)


def synced(s: Server, host: str, power: int, seen_at: float | None = None) -> Server | None:
    """The record after a power report from `host`, or None when nothing changes.

    `seen_at` is when the agent looked (before it read the power state): a report taken
    before the record's last change may predate an action that changed the power state
    meanwhile (a start that finished while the report was on its way), so it is ignored;
    the next report tells.
    """
    if s.host != host or s.task_state is not None or (s.power_state == power and power not in _OFF):
        return None
    if seen_at is not None and seen_at < s.updated_at:
        return None
    vm_state = s.vm_state
    if s.vm_state == S.ACTIVE and power in _OFF:
        vm_state = S.STOPPED  # stopped behind our back: Nova calls stop; we record it
    elif s.vm_state in (S.PAUSED, S.SUSPENDED) and power in _OFF:
        vm_state = S.STOPPED
    if vm_state == s.vm_state and power == s.power_state:
        return None
    return msgspec.structs.replace(s, vm_state=vm_state, power_state=power, updated_at=now())


async def apply(conductor: ConductorContext, ev: AgentEvent, current: Server | None = None) -> None:
    """Apply one power report; `current`, the record as just read, saves a second read
    when the report changes nothing (the usual case)."""
    if ev.power_state is None:
        return
    power = ev.power_state
    if current is not None and synced(current, ev.host, power, ev.at) is None:
        return
    before: list[Server] = []

    def change(s: Server) -> Server | None:
        before[:] = [s]
        return synced(s, ev.host, power, ev.at)

    written = await conductor.st.servers.mutate(ev.server_id, change)
    if written is None or not before:
        return
    if (written.value.vm_state, written.value.power_state) != (
        before[0].vm_state,
        before[0].power_state,
    ):
        LOG.info(
            "power_sync.changed",
            server=ev.server_id,
            vm_state=written.value.vm_state,
            power_state=power,
        )
        await notify.updated(conductor.nc, before[0], written.value)
