"""The agent's two snapshot steps: the driver writes the disk to a file, then its bytes go to the image store.

`take` (work kind `snapshot`) has the driver write the instance's disk as one standalone
file in the host's staging directory, named by the image id, and reports its disk format
and size. `upload` (work kind `upload_snapshot`) publishes that file in chunks to the
image store under the image id, checks what was stored against its size and sha256
(core/state/image_data.py `seal`), removes the file and reports both; the conductor
then makes the image active. Drivers hold no NATS code: they only write the file.

Staging files are bounded: the upload removes its file whatever happens, and each
snapshot first removes files whose image is gone or no longer waiting for its bytes (a
snapshot whose upload never came).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from nats.js import JetStreamContext

from hvmesh.agents.driver import ComputeDriver, DriverError
from hvmesh.agents.image_cache import ImageCache
from hvmesh.core import log
from hvmesh.core.protocol.messages import Work
from hvmesh.core.state import image_data
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)

STAGING = ".snapshots"  # in the image cache's directory, where cached images ignore it
WAITING = ("queued", "saving")  # image statuses that still expect a snapshot's bytes


class Snapshots:
    """Snapshot staging on one host: where the copies wait for their upload."""

    def __init__(self, js: JetStreamContext, store: Store, directory: Path) -> None:
        self.js = js
        self.store = store
        self.dir = directory

    def path(self, image_id: str) -> Path:
        if not image_id or "/" in image_id or image_id.startswith("."):
            raise DriverError(f"snapshot work names no usable image id: {image_id!r}")
        return self.dir / image_id

    async def take(self, driver: ComputeDriver, work: Work) -> dict[str, str]:
        """The driver writes the server's disk to the staging file; its format and size."""
        if work.server is None:
            raise ValueError("snapshot work without a server")
        target = self.path(work.params.get("image_id", ""))
        await self.sweep()
        self.dir.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a redelivered step starts afresh
        try:
            disk_format = await driver.snapshot(work.server, target)
            if not target.is_file() or target.stat().st_size == 0:
                raise DriverError(f"the {driver.name} driver wrote no snapshot at {target}")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        size = target.stat().st_size
        LOG.info("agent.snapshot_taken", server=work.server_id, image=target.name, size=size)
        return {"disk_format": disk_format, "size": str(size)}

    async def upload(self, work: Work) -> dict[str, str]:
        """Publish the staging file to the image store, verified; its size and sha256."""
        image_id = work.params.get("image_id", "")
        source = self.path(image_id)
        try:
            if not source.is_file():
                raise DriverError(f"no snapshot of image {image_id} on this host to upload")
            await self._check_waiting(image_id)
            await image_data.discard_chunks(self.js, image_id)  # a retried upload: afresh
            size, sha256 = await self._publish(image_id, source)
            await image_data.seal(self.js, image_id, size, sha256)
            try:
                await self._check_waiting(image_id)
            except DriverError:
                await image_data.delete(self.js, image_id)  # deleted while uploading
                raise
        finally:
            source.unlink(missing_ok=True)
        LOG.info("agent.snapshot_uploaded", server=work.server_id, image=image_id, size=size)
        return {"size": str(size), "sha256": sha256}

    async def _check_waiting(self, image_id: str) -> None:
        entry = await self.store.images.get(image_id)
        if entry is None or entry.value.status not in WAITING:
            status = "deleted" if entry is None else entry.value.status
            raise DriverError(f"image {image_id} is {status}: it takes no snapshot")

    async def _publish(self, image_id: str, source: Path) -> tuple[int, str]:
        digest = hashlib.sha256()
        offset = 0
        with source.open("rb") as fh:
            while True:
                data = await asyncio.to_thread(fh.read, image_data.MAX_CHUNK)
                if not data:
                    break
                await image_data.store_chunk(self.js, image_id, offset, data)
                digest.update(data)
                offset += len(data)
        return offset, digest.hexdigest()

    async def sweep(self) -> list[str]:
        """Remove staging files whose image no longer waits for them; what went."""
        if not self.dir.is_dir():
            return []
        removed = []
        for p in self.dir.iterdir():
            if p.name.startswith("."):
                continue
            entry = await self.store.images.get(p.name)
            if entry is None or entry.value.status not in WAITING:
                p.unlink(missing_ok=True)
                removed.append(p.name)
        if removed:
            LOG.info("agent.snapshots_swept", removed=removed)
        return removed


def snapshots_of(driver: ComputeDriver) -> Snapshots:
    """The staging of the driver's agent: a folder of its image cache, and its store."""
    cache = driver.image_cache
    if not isinstance(cache, ImageCache):
        raise DriverError("this agent has no image store to upload a snapshot to")
    return Snapshots(cache.js, cache.store, cache.dir / STAGING)
