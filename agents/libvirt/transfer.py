"""Copying a stopped instance's root disk to another host's libvirtd (cold migration).

The root volume is an overlay of this host's cached image; the destination may not
have that image at the same path, so the copy is flattened first (qemu-img convert to
a standalone qcow2 in the instance directory) and uploaded into a volume of the same
name in the destination's pool, over a libvirt stream.
"""

from __future__ import annotations

import os
from pathlib import Path

import libvirt

from hvmesh.agents.driver import DriverError
from hvmesh.agents.libvirt import disks
from hvmesh.core import log

LOG = log.get_logger(__name__)

CHUNK = 4 * 1024 * 1024


def upload(dest_uri: str, pool_name: str, volume: str, flat: Path, capacity: int) -> None:
    """Blocking: create `volume` in `pool_name` at `dest_uri` and fill it from `flat`."""
    try:
        conn = libvirt.open(dest_uri)
    except libvirt.libvirtError as exc:
        raise DriverError(f"cannot reach the destination's libvirt at {dest_uri}: {exc}") from None
    try:
        pool = conn.storagePoolLookupByName(pool_name)
        old = disks.find_volume(pool, volume)
        if old is not None:
            old.delete(0)
        vol = pool.createXML(
            f"<volume><name>{volume}</name><capacity unit='bytes'>{capacity}</capacity>"
            "<target><format type='qcow2'/></target></volume>",
            0,
        )
        size = flat.stat().st_size
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with open(flat, "rb") as fh:
            fd = fh.fileno()

            def read(_stream: libvirt.virStream, nbytes: int, _opaque: None) -> bytes:
                return os.read(fd, min(nbytes, CHUNK))

            try:
                stream.sendAll(read, None)
                stream.finish()
            except libvirt.libvirtError:
                stream.abort()
                raise
        LOG.info("libvirt.volume_uploaded", volume=volume, dest=dest_uri, bytes=size)
    except libvirt.libvirtError as exc:
        raise DriverError(f"copying {volume} to {dest_uri} failed: {exc}") from None
    finally:
        conn.close()
