"""createImage (create-image): a snapshot of a server's disk uploaded as the image the API wrote.

Two agent steps on the server's host, each bounded by `[conductor] action_timeout`:
`snapshot` (task image_snapshot: the driver writes the disk as a standalone file on the
host) and `upload_snapshot` (the agent puts that file's bytes in the image store and
checks them). Between them the server shows image_pending_upload, then image_uploading
while the image is `saving`, as in Nova. The vm_state never changes.

On success the image becomes active with the size, sha256 and disk format the agent
reported, and the task_state is cleared. On a failure or a timeout the image and any
bytes of it are deleted, the task_state cleared, and the error kept as the server's
fault and in the action log. An image the action can no longer finish (the server was
deleted or reset meanwhile, or the conductor gave the action up) is deleted by a
durable timer set when the action starts, once the action can no longer be running.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from hvmesh.core import log
from hvmesh.core.conductor.lifecycle import Handlers, Lifecycle
from hvmesh.core.protocol import states as S
from hvmesh.core.protocol.action_requests import CreateImage
from hvmesh.core.protocol.base import now
from hvmesh.core.protocol.messages import AgentEvent, Task
from hvmesh.core.protocol.records import Image, Server
from hvmesh.core.state import image_data

LOG = log.get_logger(__name__)

ACTION = "create-image"
EXPIRY_TIMER = "snapshot-expiry"


def register(lc: Lifecycle) -> None:
    sn = _Snapshot(lc)
    lc.register(
        ACTION,
        Handlers(
            run=sn.run,
            steps={"snapshot": sn.on_snapshot, "upload_snapshot": sn.on_uploaded},
            timeout=sn.on_timeout,
        ),
    )
    lc.register_timer(EXPIRY_TIMER, sn.expiry_due, gone=sn.expiry_gone)


class _Snapshot:
    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc

    def expiry_delay(self) -> float:
        """Past this, the action's two steps have each finished or timed out."""
        return 2 * self.lc.cfg.conductor.action_timeout + self.lc.cfg.conductor.task_ack_wait

    async def run(self, task: Task, srv: Server) -> None:
        assert isinstance(task.action, CreateImage) and srv.host is not None
        image_id = image_of(srv) or task.action.image_id or ""
        await self.lc.started(srv, ACTION)
        await self.lc.timer(srv, EXPIRY_TIMER, self.expiry_delay(), image_id=image_id, step_of="0")
        if await self.lc.st.images.get(image_id) is None:  # deleted meanwhile, as Nova
            await self.lc.finish(srv, ACTION, self.ended())
            LOG.info("snapshot.image_gone", server=srv.id, image=image_id)
            return
        await self.lc.send(srv, ACTION, "snapshot", srv.host, params={"image_id": image_id})

    async def on_snapshot(self, ev: AgentEvent, srv: Server) -> None:
        image_id = image_of(srv)
        if not ev.ok:
            await self.fail(srv, image_id, ev.message)
            return
        disk_format = ev.result.get("disk_format", "")

        def formatted(i: Image) -> Image:
            return msgspec.structs.replace(i, disk_format=disk_format, updated_at=now())

        if await self.lc.st.images.mutate(image_id, formatted) is None:
            await self.lc.finish(srv, ACTION, self.ended(ev))
            LOG.info("snapshot.image_gone", server=srv.id, image=image_id)
            return
        written = await self.lc.transition(srv, self.task(S.IMAGE_PENDING_UPLOAD, ev))
        if written is None:
            return

        def saving(i: Image) -> Image:
            return msgspec.structs.replace(i, status="saving", updated_at=now())

        await self.lc.st.images.mutate(image_id, saving)
        written = await self.lc.transition(written.value, self.task(S.IMAGE_UPLOADING, ev))
        if written is None:
            return
        await self.lc.send(
            written.value, ACTION, "upload_snapshot", ev.host, params={"image_id": image_id}
        )

    async def on_uploaded(self, ev: AgentEvent, srv: Server) -> None:
        image_id = image_of(srv)
        if not ev.ok:
            await self.fail(srv, image_id, ev.message)
            return
        size, checksum = int(ev.result["size"]), ev.result["sha256"]

        def active(i: Image) -> Image:
            return msgspec.structs.replace(
                i, status="active", size=size, checksum=checksum, uploaded=size, updated_at=now()
            )

        if await self.lc.st.images.mutate(image_id, active) is None:  # deleted meanwhile
            await image_data.delete(self.lc.conductor.js, image_id)
            LOG.info("snapshot.image_gone", server=srv.id, image=image_id)
        await self.lc.finish(srv, ACTION, self.ended(ev))
        LOG.info("snapshot.done", server=srv.id, image=image_id, size=size)

    async def on_timeout(self, task: Task, srv: Server) -> None:
        await self.fail(srv, image_of(srv), self.lc.timeout_reason(task))

    async def fail(self, srv: Server, image_id: str, message: str) -> None:
        """The snapshot failed: its image goes, the server keeps its vm_state, with a fault.

        An image deleted meanwhile is no failure (the snapshot was not wanted, as Nova)."""
        if image_id and await self.lc.st.images.get(image_id) is None:
            await self.drop(image_id)  # any bytes stored for it
            await self.lc.finish(srv, ACTION, self.ended())
            LOG.info("snapshot.image_gone", server=srv.id, image=image_id, error=message)
            return
        await self.drop(image_id)
        error = f"create-image failed: {message}"
        await self.lc.finish(srv, ACTION, self.ended(), error=error, fault=True)

    async def drop(self, image_id: str) -> None:
        if image_id:
            await self.lc.st.images.delete(image_id)
            await image_data.delete(self.lc.conductor.js, image_id)
            LOG.info("snapshot.image_deleted", image=image_id)

    # --- what the steps change ------------------------------------------------------------

    @staticmethod
    def task(task_state: str, ev: AgentEvent) -> Callable[[Server], Server]:
        """The next task_state, with the power state the agent saw."""

        def change(s: Server) -> Server:
            power = ev.power_state if ev.power_state is not None else s.power_state
            return msgspec.structs.replace(s, task_state=task_state, power_state=power)

        return change

    @staticmethod
    def ended(ev: AgentEvent | None = None) -> Callable[[Server], Server]:
        """The action is over: no image pending, the power state the agent saw."""

        def change(s: Server) -> Server:
            power = ev.power_state if ev is not None and ev.power_state is not None else None
            return msgspec.structs.replace(
                s, pending_image=None, power_state=s.power_state if power is None else power
            )

        return change

    # --- images the action can no longer finish ------------------------------------------

    async def expiry_due(self, task: Task, srv: Server) -> None:
        """Delete the image unless it is active; while the action still runs, wait again."""
        if srv.request_id == task.request_id:
            rounds = int(task.params.get("step_of", "0")) + 1
            await self.lc.timer(
                srv,
                EXPIRY_TIMER,
                self.expiry_delay(),
                image_id=task.params.get("image_id", ""),
                step_of=str(rounds),
            )
            return
        await self.expiry_gone(task)

    async def expiry_gone(self, task: Task) -> None:
        image_id = task.params.get("image_id", "")
        entry = await self.lc.st.images.get(image_id) if image_id else None
        if entry is not None and entry.value.status == "active":
            return
        LOG.warning("snapshot.abandoned", server=task.server_id, image=image_id)
        await self.drop(image_id)


def image_of(srv: Server) -> str:
    """The image the server's running create-image makes (the API set it)."""
    return srv.pending_image or ""
