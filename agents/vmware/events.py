"""Power-state changes of the agent's VMs as they happen: WaitForUpdatesEx on runtime.powerState, on a session of its own.

The listener runs on its own Session (its own connection and worker thread), so its long
polls never hold up the driver's calls. Each change of a tagged VM's power state is
handed to the driver's power listener on the event loop at once; the first answer
(every VM's current state) only fills the watcher's memory. A lost connection is
reconnected with backoff and the filter made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from pyVmomi import vim, vmodl

from hvmesh.agents.vmware.session import RETRYABLE, Session
from hvmesh.agents.vmware.vm_spec import SERVER_ID_KEY
from hvmesh.core import log
from hvmesh.core.protocol import states
from hvmesh.core.tasks import stop_tasks

LOG = log.get_logger(__name__)

POWER_STATES = {
    "poweredOn": states.RUNNING,
    "poweredOff": states.SHUTDOWN,
    "suspended": states.POWER_SUSPENDED,
}
#: What ends one watch (it is made again after a backoff).
WATCH_ERRORS: tuple[type[Exception], ...] = (*RETRYABLE, vmodl.MethodFault)
#: Seconds one WaitForUpdatesEx call waits for a change.
WAIT_SECONDS = 5


def power_of(value: Any) -> int:
    return POWER_STATES.get(str(value), states.NOSTATE)


def server_id_of(extra_config: Any) -> str | None:
    for opt in extra_config or []:
        if opt.key == SERVER_ID_KEY:
            return str(opt.value)
    return None


def pool_vms(pool: Any, paths: list[str]) -> Any:
    """A filter spec reaching every VM under resource pool `pool` (child pools too),
    reading `paths` of each: traversal specs, so VMs made later are in it as well."""
    PC = vmodl.query.PropertyCollector
    to_pools = PC.TraversalSpec(
        name="pools", type=vim.ResourcePool, path="resourcePool", skip=False
    )
    to_vms = PC.TraversalSpec(name="vms", type=vim.ResourcePool, path="vm", skip=False)
    to_pools.selectSet = [PC.SelectionSpec(name="pools"), PC.SelectionSpec(name="vms")]
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=pool, skip=True, selectSet=[to_pools, to_vms])],
        propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
    )


def vm_filter(si: Any, pool: Any) -> Any:
    """(worker thread) A property filter on the VMs under `pool`: tag and power state."""
    spec = pool_vms(pool, ["runtime.powerState", "config.extraConfig"])
    return si.content.propertyCollector.CreateFilter(spec, partialUpdates=True)


def wait_for_updates(si: Any, version: str, options: Any) -> Any:
    """(worker thread) The next changes after `version`, or None after the wait."""
    return si.content.propertyCollector.WaitForUpdatesEx(version, options)


class PowerWatcher:
    def __init__(
        self,
        session: Session,
        find_pool: Callable[[Any], Any],
        notify: Callable[[str, int], Awaitable[None]],
    ) -> None:
        self.session = session
        self.find_pool = find_pool
        self.notify = notify
        self._task: asyncio.Task[None] | None = None
        self._known: dict[str, str] = {}  # VM moref id -> server id
        self._power: dict[str, int] = {}  # VM moref id -> last power state

    async def start(self) -> None:
        await self.session.open()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_tasks([self._task])
        await self.session.close()

    async def _run(self) -> None:
        delay = self.session.cfg.connection_backoff
        while True:
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except WATCH_ERRORS as exc:
                LOG.warning("vmware.events_lost", error=str(exc), retry_in=delay)
            except Exception:
                LOG.exception("vmware.events_failed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _watch(self) -> None:
        pfilter = await self.session.call(
            lambda si: vm_filter(si, self.find_pool(si)), "watching VMs"
        )
        version = ""
        first = True
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=WAIT_SECONDS)
        try:
            while True:
                update = await self.session.call(
                    functools.partial(wait_for_updates, version=version, options=options),
                    "waiting for VM changes",
                )
                if update is None:
                    continue
                version = update.version
                for fset in update.filterSet:
                    for change in fset.objectSet:
                        await self._apply(change, report=not first)
                first = False
        finally:
            with contextlib.suppress(Exception):
                await self.session.call(lambda _si: pfilter.Destroy())

    async def _apply(self, change: Any, report: bool) -> None:
        key = change.obj._moId
        if change.kind == "leave":
            self._known.pop(key, None)
            self._power.pop(key, None)
            return
        # the tag first: a new VM's first update carries both
        ordered = sorted(change.changeSet, key=lambda p: p.name != "config.extraConfig")
        for prop in ordered:
            if prop.name == "config.extraConfig":
                sid = server_id_of(prop.val)
                if sid is not None:
                    self._known[key] = sid
            elif prop.name == "runtime.powerState":
                state = power_of(prop.val)
                before = self._power.get(key)
                self._power[key] = state
                sid = self._known.get(key)
                if report and sid is not None and before != state:
                    LOG.info("vmware.power_event", server=sid, power=state)
                    try:
                        await self.notify(sid, state)
                    except Exception:
                        LOG.exception("vmware.power_listener_failed", server=sid)
