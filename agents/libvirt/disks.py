"""Instance disks: the libvirt storage pool and the volumes in it.

The pool ([libvirt] storage_pool) is a directory pool, defined, built and started when
missing. A server's root disk is the volume "<server id>-root": a qcow2 overlay whose
backing file is the cached image, so the image is stored once per host whatever the
number of guests booted from it. Every volume of a server is named "<server id>-...".
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from hvmesh.agents.driver import DriverError
from hvmesh.core import log
from hvmesh.core.config import Config, state_dir

LOG = log.get_logger(__name__)

GIB = 1024**3
BACKING_FORMATS = ("qcow2", "raw")


def pool_path(cfg: Config) -> Path:
    return Path(cfg.libvirt.storage_pool_path or state_dir() / "disks").expanduser()


def root_volume_name(server_id: str) -> str:
    return f"{server_id}-root"


def ensure_pool(conn: libvirt.virConnect, cfg: Config) -> libvirt.virStoragePool:
    """The instance storage pool, running; defined at storage_pool_path if missing."""
    name = cfg.libvirt.storage_pool
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        path = pool_path(cfg)
        root = ET.Element("pool", type="dir")
        ET.SubElement(root, "name").text = name
        ET.SubElement(ET.SubElement(root, "target"), "path").text = str(path)
        pool = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
        pool.build(0)
        pool.setAutostart(1)
        LOG.info("libvirt.pool_defined", pool=name, path=str(path))
    if not pool.isActive():
        pool.create(0)
        LOG.info("libvirt.pool_started", pool=name)
    return pool


def pool_capacity_gb(pool: libvirt.virStoragePool) -> int:
    _state, capacity, _allocation, _available = pool.info()
    return int(capacity // GIB)


async def image_info(path: Path) -> dict:
    """What qemu-img says of a local image file: its format and virtual size."""
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        "info",
        "--output=json",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DriverError(f"qemu-img info {path}: {err.decode().strip()}")
    return json.loads(out)


def find_volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def create_overlay(
    pool: libvirt.virStoragePool,
    name: str,
    backing: Path,
    backing_format: str,
    capacity_bytes: int,
) -> libvirt.virStorageVol:
    """A qcow2 volume over `backing`, replacing one of the same name left from before."""
    if backing_format not in BACKING_FORMATS:
        raise DriverError(
            f"image disk format {backing_format!r} cannot back a root disk: "
            f"use one of {BACKING_FORMATS}"
        )
    old = find_volume(pool, name)
    if old is not None:
        old.delete(0)
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity_bytes)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type="qcow2")
    store = ET.SubElement(root, "backingStore")
    ET.SubElement(store, "path").text = str(backing)
    ET.SubElement(store, "format", type=backing_format)
    vol = pool.createXML(ET.tostring(root, encoding="unicode"), 0)
    LOG.info("libvirt.volume_created", volume=name, backing=str(backing), bytes=capacity_bytes)
    return vol


def grow(vol: libvirt.virStorageVol, capacity_bytes: int) -> None:
    """Make the volume at least `capacity_bytes` large (a disk never shrinks)."""
    _type, capacity, _allocation = vol.info()
    if capacity_bytes > capacity:
        vol.resize(capacity_bytes, 0)
        LOG.info("libvirt.volume_grown", volume=vol.name(), bytes=capacity_bytes)


def server_volumes(pool: libvirt.virStoragePool, server_id: str) -> list[libvirt.virStorageVol]:
    prefix = f"{server_id}-"
    return [v for v in pool.listAllVolumes(0) if v.name().startswith(prefix)]


def delete_server_volumes(pool: libvirt.virStoragePool, server_id: str) -> None:
    for vol in server_volumes(pool, server_id):
        name = vol.name()
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        LOG.info("libvirt.volume_deleted", volume=name)


async def convert(
    source: Path, target: Path, fmt: str = "qcow2", force_share: bool = False
) -> None:
    """A standalone copy of `source` (and its backing chain) at `target`. `force_share`
    reads a disk a running QEMU holds open (its guest paused, so the copy is consistent)."""
    share = ["-U"] if force_share else []
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        "convert",
        *share,
        "-O",
        fmt,
        str(source),
        str(target),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DriverError(f"qemu-img convert {source}: {err.decode().strip()}")
