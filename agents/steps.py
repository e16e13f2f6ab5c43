"""The work kinds an agent carries out: each one call of the driver, named as the Nova ComputeDriver method it maps to.

The runtime looks a work item's kind up in STEPS and runs it; what a step returns (a
snapshot's format, size, sha256) its event carries as `result`. Nothing here is
hypervisor-specific.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.snapshots import snapshots_of
from hvmesh.core.protocol.messages import Work
from hvmesh.core.protocol.records import Server, Vif


def _server(work: Work) -> Server:
    if work.server is None:
        raise ValueError(f"{work.kind} work without a server")
    return work.server


def _vif(work: Work) -> Vif:
    if work.vif is None:
        raise ValueError(f"{work.kind} work without an interface")
    return work.vif


def _flag(work: Work, name: str) -> bool:
    return work.params.get(name) == "1"


# Work kind -> the driver call it makes.
STEPS: dict[str, Callable[[ComputeDriver, Work], Awaitable[dict[str, str] | None]]] = {
    "spawn": lambda d, w: d.spawn(_server(w), w.image),
    "destroy": lambda d, w: d.destroy(w.server_id),
    "reboot": lambda d, w: d.reboot(_server(w), w.params.get("type", "SOFT")),
    "power_off": lambda d, w: d.power_off(w.server_id),
    "power_on": lambda d, w: d.power_on(_server(w)),
    "pause": lambda d, w: d.pause(w.server_id),
    "unpause": lambda d, w: d.unpause(w.server_id),
    "suspend": lambda d, w: d.suspend(w.server_id),
    "resume": lambda d, w: d.resume(_server(w)),
    "rebuild": lambda d, w: _rebuild(d, w),
    "migrate_disk_and_power_off": lambda d, w: d.migrate_disk_and_power_off(
        _server(w), w.params["dest"], _server(w).flavor
    ),
    "finish_migration": lambda d, w: d.finish_migration(_server(w), w.image, _flag(w, "power_on")),
    "confirm_migration": lambda d, w: d.confirm_migration(w.server_id),
    "finish_revert_migration": lambda d, w: d.finish_revert_migration(
        _server(w), _flag(w, "power_on")
    ),
    "prepare_live_migration": lambda d, w: _prepare_live(d, w),
    "live_migration": lambda d, w: _live(d, w),
    "post_live_migration_at_destination": lambda d, w: d.post_live_migration_at_destination(
        _server(w)
    ),
    "rollback_live_migration_at_destination": lambda d, w: d.rollback_live_migration_at_destination(
        w.server_id
    ),
    "attach_interface": lambda d, w: d.attach_interface(_server(w), _vif(w)),
    "detach_interface": lambda d, w: d.detach_interface(_server(w), _vif(w)),
    "snapshot": lambda d, w: snapshots_of(d).take(d, w),
    "upload_snapshot": lambda d, w: snapshots_of(d).upload(w),
}


# Steps that build an instance from its image (whose cached file it then uses).
IMAGE_STEPS = {"spawn", "rebuild", "finish_migration"}


async def _rebuild(d: ComputeDriver, w: Work) -> None:
    await d.rebuild(_server(w), w.image)
    if w.params.get("power_on") == "0":  # a stopped server stays stopped, as in Nova
        await d.power_off(w.server_id)


async def _prepare_live(d: ComputeDriver, w: Work) -> None:
    await d.check_can_live_migrate_destination(_server(w), w.params["source"])
    await d.pre_live_migration(_server(w))


async def _live(d: ComputeDriver, w: Work) -> None:
    await d.check_can_live_migrate_source(_server(w), w.params["dest"])
    await d.live_migration(_server(w), w.params["dest"])
