"""The agent's image cache: image files on the host, one per sha256, fetched once.

Drivers ask for an image (`fetch`) and get a local, verified file named by its sha256.
Concurrent boots of one image wait on one download: an asyncio lock per checksum within
the agent, and an exclusive file lock (fcntl) across agents sharing the directory. A
download goes to a temporary file and is renamed into place only once its sha256
matched. Files not used by any instance on the host are evicted, least recently used
first, when the cache is over its size limit: an instance pins every image it needs, its
root image and the kernel and ramdisk its image's `kernel_id` and `ramdisk_id` name.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from nats.js import JetStreamContext

from hvmesh.core import log
from hvmesh.core.protocol import errors
from hvmesh.core.protocol.records import Image
from hvmesh.core.state import image_data
from hvmesh.core.state.store import Store

LOG = log.get_logger(__name__)


class ImageCache:
    def __init__(
        self, js: JetStreamContext, store: Store, directory: Path, max_bytes: int = 0
    ) -> None:
        self.js = js
        self.store = store
        self.dir = directory
        self.max_bytes = max_bytes
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.downloads = 0  # images fetched from the store by this process
        self.hits = 0  # fetches answered from the cache
        self._pins: dict[str, set[str]] = {}  # server id -> checksums its instance uses

    def path(self, checksum: str) -> Path:
        return self.dir / checksum

    async def fetch_id(self, image_id: str) -> Path:
        entry = await self.store.images.get(image_id)
        if entry is None:
            raise errors.NotFound(f"image {image_id} not found")
        return await self.fetch(entry.value)

    async def fetch(self, image: Image) -> Path:
        """The image's file, downloaded and verified on first use."""
        if image.status != "active" or not image.checksum:
            raise errors.Conflict(f"image {image.id} has no uploaded data ({image.status})")
        target = self.path(image.checksum)
        async with self._locks[image.checksum]:
            if target.exists():
                self.hits += 1
                os.utime(target)  # most recently used
                return target
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._file_lock(image.checksum):
                if not target.exists():  # another agent on this host may have fetched it
                    await self._download(image, target)
                else:
                    self.hits += 1
        self.trim(keep={image.checksum})
        return target

    @contextlib.contextmanager
    def _file_lock(self, checksum: str) -> Iterator[None]:
        lock_path = self.dir / f".{checksum}.lock"
        with lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()

    async def _download(self, image: Image, target: Path) -> None:
        assert image.checksum is not None
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        LOG.info("image_cache.download", image=image.id, size=image.size)
        try:
            with partial.open("wb") as fh:
                size = await image_data.download(self.js, image.id, image.checksum, fh)
                fh.flush()
                os.fsync(fh.fileno())
            partial.rename(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self.downloads += 1
        LOG.info("image_cache.downloaded", image=image.id, size=size)

    def cached(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return [p for p in self.dir.iterdir() if p.is_file() and not p.name.startswith(".")]

    def trim(self, keep: set[str] | None = None, in_use: set[str] | None = None) -> list[str]:
        """Evict unused files, least recently used first, until under max_bytes.

        `keep` and `in_use` are checksums that stay whatever the size. Returns what went.
        """
        if not self.max_bytes:
            return []
        protected = (keep or set()) | (in_use or set()) | self.pinned
        files = sorted(self.cached(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        evicted: list[str] = []
        for p in files:
            if total <= self.max_bytes:
                break
            if p.name in protected or self._locks.get(p.name, asyncio.Lock()).locked():
                continue
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            evicted.append(p.name)
            LOG.info("image_cache.evicted", checksum=p.name)
        return evicted

    # --- what instances use -------------------------------------------------------------

    def pin(self, server_id: str, checksums: set[str]) -> None:
        """Mark the images an instance on this host uses: they are never evicted."""
        self._pins[server_id] = set(checksums)

    async def needed(self, image: Image | None, properties: dict[str, str]) -> set[str]:
        """The checksums an instance needs: its root image's, and its kernel's and
        ramdisk's when the image's properties name them (`kernel_id`, `ramdisk_id`)."""
        sums = {image.checksum} if image is not None and image.checksum else set()
        for key in ("kernel_id", "ramdisk_id"):
            image_id = properties.get(key)
            if not image_id:
                continue
            try:
                entry = await self.store.images.get(image_id)
            except Exception as exc:  # the instance runs: a pin missed is not a failure
                LOG.warning("image_cache.pin_lookup_failed", image=image_id, error=str(exc))
                continue
            if entry is not None and entry.value.checksum:
                sums.add(entry.value.checksum)
        return sums

    async def pin_instance(
        self, server_id: str, image: Image | None, properties: dict[str, str]
    ) -> None:
        """Pin everything the instance of `server_id` boots from (see `needed`)."""
        sums = await self.needed(image, properties)
        if sums:
            self.pin(server_id, sums)

    def unpin(self, server_id: str) -> None:
        self._pins.pop(server_id, None)

    def pinned_servers(self) -> list[str]:
        """The servers whose images are pinned here."""
        return sorted(self._pins)

    @property
    def pinned(self) -> set[str]:
        return set().union(*self._pins.values()) if self._pins else set()
