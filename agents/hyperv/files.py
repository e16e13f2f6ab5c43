"""Files copied to and from the Hyper-V host over WinRM: base images into the image cache once, by checksum, config drive ISOs, and snapshots back.

A file goes up in [hyperv] upload_chunk byte chunks, each one command whose data is the
chunk in base64 (Set-Content for the first, Add-Content for the rest, -Encoding Byte),
into `<name>.partial`; Get-FileHash then checks the whole against the local sha256
before Move-Item gives it its name, so a cache entry is either whole or absent. A file
comes back (a snapshot) in larger chunks, read with a FileStream and written to stdout
in base64, and is checked the same way. An image
is cached as `<sha256>.<vhd|vhdx>` under [hyperv] image_cache_path and uploaded only
when no such file is there yet (operators may also place it there themselves).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ntpath
from collections import defaultdict
from pathlib import Path

from hvmesh.agents.driver import DriverError
from hvmesh.agents.hyperv import scripts
from hvmesh.agents.hyperv.base import HypervBase
from hvmesh.core import log
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Image

LOG = log.get_logger(__name__)

#: Bytes of a file read from the host in one command.
DOWNLOAD_CHUNK = 4 << 20
#: The image formats Hyper-V boots from, and their file extension.
DISK_FORMATS = {"vhd": "vhd", "vhdx": "vhdx"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HypervFiles(HypervBase):
    def __init__(self, host: str, config: Config) -> None:
        super().__init__(host, config)
        #: One upload per cache file at a time (two spawns of one image share it).
        self._cache_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def exists(self, path: str) -> bool:
        got = await self.ps(scripts.TEST_PATH, f"looking for {path}", path=path)
        return bool(got and got[0] is True)

    async def remove_path(self, path: str) -> None:
        await self.ps(scripts.REMOVE_PATH, f"removing {path}", path=path)

    async def upload(self, local: Path, remote: str, sha256: str = "") -> None:
        """Copy `local` to `remote` on the host, checked against its sha256."""
        sha256 = sha256 or await asyncio.to_thread(sha256_of, local)
        partial = remote + ".partial"
        size = local.stat().st_size
        chunk = self.cfg.upload_chunk
        with local.open("rb") as f:
            offset = 0
            while True:
                data = f.read(chunk)
                body = scripts.WRITE_FIRST_CHUNK if offset == 0 else scripts.APPEND_CHUNK
                await self.ps(
                    body,
                    f"uploading {local.name} to {remote} ({offset}/{size} bytes)",
                    path=partial,
                    data=base64.b64encode(data).decode("ascii"),
                )
                offset += len(data)
                if offset >= size:
                    break
        got = await self.ps(scripts.FINISH_UPLOAD, f"checking {partial}", partial=partial)
        remote_hash = str(got[0].get("Hash", "")) if got and isinstance(got[0], dict) else ""
        if remote_hash.lower() != sha256.lower():
            await self.remove_path(partial)
            raise DriverError(
                f"uploading {local.name} to {self.cfg.host}: the copy's sha256 is "
                f"{remote_hash.lower() or '(none)'}, not {sha256.lower()}"
            )
        await self.ps(scripts.MOVE_FILE, f"naming {remote}", source=partial, dest=remote)
        LOG.info("hyperv.uploaded", host=self.cfg.host, path=remote, bytes=size)

    async def download(self, remote: str, local: Path) -> None:
        """Copy `remote` from the host to `local`, DOWNLOAD_CHUNK bytes a command (base64
        on stdout, which has no command line's bound), checked against Get-FileHash."""
        got = await self.ps(scripts.FILE_SIZE, f"reading the size of {remote}", path=remote)
        size = int(got[0].get("Length", 0)) if got and isinstance(got[0], dict) else 0
        with local.open("wb") as out:
            offset = 0
            while offset < size:
                chunk = await self.ps(
                    scripts.READ_CHUNK,
                    f"downloading {remote} ({offset}/{size} bytes)",
                    path=remote,
                    offset=offset,
                    size=min(DOWNLOAD_CHUNK, size - offset),
                )
                data = base64.b64decode(str(chunk[0])) if chunk else b""
                if not data:
                    raise DriverError(f"downloading {remote}: no bytes at offset {offset}")
                out.write(data)
                offset += len(data)
        got = await self.ps(scripts.FINISH_UPLOAD, f"checking {remote}", partial=remote)
        remote_hash = str(got[0].get("Hash", "")) if got and isinstance(got[0], dict) else ""
        local_hash = await asyncio.to_thread(sha256_of, local)
        if remote_hash.lower() != local_hash:
            raise DriverError(
                f"downloading {remote} from {self.cfg.host}: the copy's sha256 is "
                f"{local_hash}, not {remote_hash.lower() or '(none)'}"
            )
        LOG.info("hyperv.downloaded", host=self.cfg.host, path=remote, bytes=size)

    async def cached_image(self, image: Image) -> str:
        """The image's base disk in the host's image cache, uploaded if it is not there."""
        ext = DISK_FORMATS.get(image.disk_format)
        if ext is None:
            raise DriverError(
                f"image {image.name} is {image.disk_format}: Hyper-V boots vhd or vhdx images"
            )
        local = await (await self.images()).fetch(image)
        return await self.cache_file(local, ext, image.checksum or "")

    async def cache_file(self, local: Path, ext: str, checksum: str = "") -> str:
        """`local` in the host's image cache as <sha256>.<ext>, uploaded if not there."""
        checksum = checksum or await asyncio.to_thread(sha256_of, local)
        remote = ntpath.join(self.cfg.image_cache_path, f"{checksum.lower()}.{ext}")
        async with self._cache_locks[remote.lower()]:
            if not await self.exists(remote):
                await self.upload(local, remote, checksum)
        return remote
