"""Power-state changes of hvmesh's VMs as they happen: WaitForUpdatesEx on runtime.powerState, on a session of its own.

The watcher runs on its own Session (its own connection and worker thread) and its own
PropertyCollector, so its long polls never hold up the driver's calls or another
waiter's. It follows every VM under the datacenter's VM folder; each change of a tagged
VM's power state is handed at once, with the server id and the ESXi host the VM runs
on, to `notify`. The first answer of a watch (every VM's current state) fills the
watcher's memory; after a lost connection (reconnected with backoff, the collector made
again) it also reports what changed while the watch was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from pyVmomi import vim, vmodl

from hvmesh.agents.vmware.inventory import cluster_spec
from hvmesh.agents.vmware.session import RETRYABLE, Session
from hvmesh.agents.vmware.vms import folder_vms, host_id, server_id_of
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


def new_collector(si: Any) -> Any:
    """(worker thread) A PropertyCollector of the watcher's own: its filters and waits are
    apart from every other user of the session's collector (vSphere's advice for waiters;
    govmomi's simulator even hands one collector's updates to the last waiter only)."""
    return si.content.propertyCollector.CreatePropertyCollector()


def destroy_collector(collector: Any) -> None:
    """(worker thread) Drop a collector made by new_collector, and its filters with it."""
    collector.DestroyPropertyCollector()


def wait_for_updates(_si: Any, collector: Any, version: str, options: Any) -> Any:
    """(worker thread) The next changes after `version`, or None after the wait."""
    return collector.WaitForUpdatesEx(version, options)


class PowerWatcher:
    def __init__(
        self,
        session: Session,
        find_folder: Callable[[Any], Any],
        notify: Callable[[str, int, str], Awaitable[None]],
        find_cluster: Callable[[Any], Any] | None = None,
        resources_changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.session = session
        self.find_folder = find_folder
        self.notify = notify
        self.find_cluster = find_cluster
        self.resources_changed = resources_changed
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
        collector = await self.session.call(new_collector, "making a property collector")
        try:
            await self._follow(collector)
        finally:
            with contextlib.suppress(Exception):
                await self.session.call(lambda _si: destroy_collector(collector))

    async def _follow(self, collector: Any) -> None:
        """Filters on the VMs (and the cluster) in `collector`, then its updates, until an
        error ends the watch."""
        find_folder = self.find_folder
        await self.session.call(
            lambda si: collector.CreateFilter(
                folder_vms(find_folder(si), ["config.extraConfig", "runtime.powerState"]),
                partialUpdates=True,
            ),
            "watching VMs",
        )
        if self.find_cluster is not None:
            find = self.find_cluster
            await self.session.call(
                lambda si: collector.CreateFilter(cluster_spec(find(si)), partialUpdates=True),
                "watching the cluster",
            )
        version = ""
        first = True
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=WAIT_SECONDS)
        while True:
            update = await self.session.call(
                functools.partial(
                    wait_for_updates, collector=collector, version=version, options=options
                ),
                "waiting for VM changes",
            )
            if update is None:
                continue
            version = update.version
            resources = False
            for fset in update.filterSet:
                for change in fset.objectSet:
                    if isinstance(change.obj, vim.VirtualMachine):
                        await self._apply(change, first=first)
                    else:
                        resources = True
            if resources and not first and self.resources_changed is not None:
                LOG.info("vmware.resources_changed")
                try:
                    await self.resources_changed()
                except Exception:
                    LOG.exception("vmware.resources_listener_failed")
            first = False

    async def _host_of(self, vm: Any) -> str:
        """The moref id of the ESXi host the VM runs on now: read when a change is reported,
        since not every vCenter sends the change of runtime.host that a vMotion makes."""
        try:
            return host_id(await self.session.call(lambda _si: vm.runtime.host))
        except vmodl.fault.ManagedObjectNotFound:
            return ""

    async def _apply(self, change: Any, first: bool) -> None:
        """Learn a VM's tag and power state; report a power change. The first answer of a
        watch is every VM's state: only what changed since an earlier watch (lost to a
        reconnect meanwhile) is reported from it."""
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
                if sid is not None and before != state and (not first or before is not None):
                    LOG.info("vmware.power_event", server=sid, power=state)
                    try:
                        await self.notify(sid, state, await self._host_of(change.obj))
                    except Exception:
                        LOG.exception("vmware.power_listener_failed", server=sid)
