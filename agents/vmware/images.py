"""Datastore files over vCenter's HTTP file API, and the image cache on them: each image uploaded once per datastore as a flat VMDK every root disk is copied from.

A raw image becomes "<cache folder>/<sha256>-flat.vmdk" (the bytes, padded to whole
sectors) and its descriptor "<sha256>.vmdk", written last: a descriptor present means a
whole upload. Uploads run on a thread of their own with the session's cookie, so the
session's thread keeps serving other calls meanwhile.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from hvmesh.agents.driver import DriverError
from hvmesh.agents.vmware.vm_spec import flat_descriptor
from hvmesh.core import log
from hvmesh.core.config_drivers import VmwareSection

LOG = log.get_logger(__name__)

CHUNK = 1024 * 1024
TIMEOUT = 300.0


class DatastoreFiles:
    """Files on a datastore over https://<vCenter>/folder/<path>?dcPath=&dsName=."""

    def __init__(self, cfg: VmwareSection, context: ssl.SSLContext) -> None:
        self.cfg = cfg
        self.context = context
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _url(self, datacenter: str, datastore: str, path: str) -> str:
        query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
        return f"/folder/{urllib.parse.quote(path)}?{query}"

    def _request(
        self,
        method: str,
        url: str,
        cookie: str,
        body: Iterator[bytes] | bytes | None = None,
        length: int = 0,
    ) -> int:
        conn = http.client.HTTPSConnection(
            self.cfg.host, self.cfg.port, context=self.context, timeout=TIMEOUT
        )
        try:
            headers = {"Cookie": cookie}
            if body is not None:
                headers |= {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(length),
                }
            conn.request(method, url, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    async def exists(self, cookie: str, datacenter: str, datastore: str, path: str) -> bool:
        status = await asyncio.to_thread(
            self._request, "HEAD", self._url(datacenter, datastore, path), cookie
        )
        return status == 200

    def _fetch(self, url: str, cookie: str, sink: Callable[[bytes], None]) -> int:
        """GET `url`, handing the body to `sink` chunk by chunk; the HTTP status."""
        conn = http.client.HTTPSConnection(
            self.cfg.host, self.cfg.port, context=self.context, timeout=TIMEOUT
        )
        try:
            conn.request("GET", url, headers={"Cookie": cookie})
            response = conn.getresponse()
            if response.status == 200:
                while chunk := response.read(CHUNK):
                    sink(chunk)
            else:
                response.read()
            return response.status
        finally:
            conn.close()

    async def read_tail(
        self, cookie: str, datacenter: str, datastore: str, path: str, limit: int
    ) -> bytes | None:
        """The last `limit` bytes of a datastore file; None when there is no such file."""
        kept = bytearray()

        def keep(chunk: bytes) -> None:
            kept.extend(chunk)
            del kept[:-limit]

        url = self._url(datacenter, datastore, path)
        try:
            status = await asyncio.to_thread(self._fetch, url, cookie, keep)
        except (OSError, http.client.HTTPException) as exc:
            raise DriverError(f"reading [{datastore}] {path}: {exc}") from None
        if status == 404:
            return None
        if status != 200:
            raise DriverError(f"reading [{datastore}] {path}: vCenter answered HTTP {status}")
        return bytes(kept)

    async def download(
        self, cookie: str, datacenter: str, datastore: str, path: str, target: Path
    ) -> None:
        """Copy a datastore file to the local file `target`."""
        url = self._url(datacenter, datastore, path)
        try:
            with open(target, "wb") as out:

                def write(chunk: bytes) -> None:
                    out.write(chunk)

                status = await asyncio.to_thread(self._fetch, url, cookie, write)
        except (OSError, http.client.HTTPException) as exc:
            raise DriverError(f"downloading [{datastore}] {path}: {exc}") from None
        if status != 200:
            raise DriverError(f"downloading [{datastore}] {path}: vCenter answered HTTP {status}")

    async def upload(
        self,
        cookie: str,
        datacenter: str,
        datastore: str,
        path: str,
        body: Iterator[bytes] | bytes,
        length: int,
    ) -> None:
        url = self._url(datacenter, datastore, path)
        status = await asyncio.to_thread(self._request, "PUT", url, cookie, body, length)
        if status not in (200, 201, 204):
            raise DriverError(f"uploading [{datastore}] {path}: vCenter answered HTTP {status}")

    async def cached_image(
        self, cookie: str, datacenter: str, datastore: str, checksum: str, local: Path
    ) -> str:
        """The datastore path ("[ds] folder/<sha256>.vmdk") of the image whose local
        file is `local`, uploaded first if this datastore does not have it yet."""
        folder = self.cfg.image_cache_folder.strip("/")
        descriptor = f"{folder}/{checksum}.vmdk"
        flat = f"{checksum}-flat.vmdk"
        async with self._locks[f"{datastore}/{checksum}"]:
            try:
                if not await self.exists(cookie, datacenter, datastore, descriptor):
                    size = local.stat().st_size
                    padded = -(-size // 512) * 512
                    LOG.info("vmware.image_upload", datastore=datastore, image=checksum, size=size)
                    await self.upload(
                        cookie,
                        datacenter,
                        datastore,
                        f"{folder}/{flat}",
                        _padded(local, padded),
                        padded,
                    )
                    text = flat_descriptor(flat, size)
                    await self.upload(cookie, datacenter, datastore, descriptor, text, len(text))
            except (OSError, http.client.HTTPException) as exc:
                raise DriverError(f"image cache on datastore {datastore}: {exc}") from None
        return f"[{datastore}] {descriptor}"


def _padded(path: Path, total: int) -> Iterator[bytes]:
    """The file's bytes, then zeros up to `total`."""
    sent = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sent += len(chunk)
            yield chunk
    if total > sent:
        yield b"\0" * (total - sent)
