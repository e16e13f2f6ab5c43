"""Power states: libvirt's domain states and lifecycle events in hvmesh's (Nova's) terms,
and waiting for a lifecycle event instead of polling.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import libvirt

from hvmesh.core.protocol import states

_BY_DOMAIN_STATE = {
    libvirt.VIR_DOMAIN_NOSTATE: states.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: states.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: states.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: states.POWER_PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: states.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: states.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: states.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: states.POWER_SUSPENDED,
}


def of_domain(dom: libvirt.virDomain) -> int:
    """A domain's power state; a stopped domain with a managed save image is suspended."""
    state, _reason = dom.state(0)
    power = _BY_DOMAIN_STATE.get(state, states.NOSTATE)
    if power == states.SHUTDOWN and dom.hasManagedSaveImage(0):
        return states.POWER_SUSPENDED
    return power


def of_event(event: int, detail: int) -> int | None:
    """The power state a lifecycle event announces; None for one that changes none
    (defined, undefined, a guest-initiated shutdown still in progress, a migration)."""
    if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
        if detail == libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED:
            return None  # an incoming migration: its post step reports it
        return states.RUNNING
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        if detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED:
            return None  # the last phase of an outgoing live migration
        return states.POWER_PAUSED
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED:
            return None  # it runs elsewhere now
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED:
            return states.POWER_SUSPENDED
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED:
            return states.CRASHED
        return states.SHUTDOWN
    if event == libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED:
        return states.POWER_SUSPENDED
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return states.CRASHED
    return None


class Waiters:
    """Futures waiting for a server's next power state that passes a test."""

    def __init__(self) -> None:
        self._waiting: defaultdict[str, list[tuple[Callable[[int], bool], asyncio.Future[int]]]]
        self._waiting = defaultdict(list)

    def expect(self, server_id: str, want: Callable[[int], bool]) -> asyncio.Future[int]:
        """A future set when an event brings `server_id` to a state `want` accepts.
        Take it before the call that causes the event, so the event cannot be missed."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[server_id].append((want, fut))
        return fut

    def forget(self, server_id: str, fut: asyncio.Future[int]) -> None:
        entries = self._waiting.get(server_id, [])
        entries[:] = [(w, f) for w, f in entries if f is not fut]
        if not entries:
            self._waiting.pop(server_id, None)

    def notify(self, server_id: str, power: int) -> None:
        entries = self._waiting.get(server_id)
        if not entries:
            return
        keep = []
        for want, fut in entries:
            if fut.done():
                continue
            if want(power):
                fut.set_result(power)
            else:
                keep.append((want, fut))
        if keep:
            self._waiting[server_id] = keep
        else:
            self._waiting.pop(server_id, None)
