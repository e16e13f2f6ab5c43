"""The libvirt driver's real peer: the system libvirtd (qemu:///system) running QEMU
guests under software emulation, with the tiny guest of tests/guest/.

What tests/setup_libvirt.sh sets up: libvirtd and virtlogd running, QEMU, and the guest
(a Debian kernel, a busybox initramfs and a small qcow2 disk in tests/guest/.build).
Shared by the libvirt end-to-end test and the driver conformance suite.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import libvirt

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.libvirt.driver import LibvirtDriver
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Flavor, Image
from tests.drivers.peers import Peer, PeerUnavailable, ready

GUEST = Path(__file__).resolve().parent.parent / "guest" / ".build"
URI = "qemu:///system"
#: The guest's files, as images: image id -> file name in GUEST.
GUEST_FILES = {"guest-kernel": "vmlinuz", "guest-initrd": "initrd.img", "guest": "disk.qcow2"}


def unavailable() -> str | None:
    """Why the real libvirtd or the test guest cannot be used here; None when they can."""
    skip = GUEST / "libvirt-skip"
    if skip.exists():
        return skip.read_text().strip() or "tests/setup_libvirt.sh could not set up libvirt"
    if not (GUEST / "vmlinuz").exists():
        return "no test guest: run tests/setup_libvirt.sh"
    probe = subprocess.run(["virsh", "-c", URI, "uri"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"libvirtd does not answer on {URI}: {probe.stderr.strip()}"
    return None


@contextlib.contextmanager
def host_dir() -> Iterator[Path]:
    """A directory for disks, cached images and instance files where QEMU (libvirt-qemu)
    may read them (pytest's tmp_path is under a 0700 directory); removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="hvmesh-e2e-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        for sub in ("disks", "images", "instances", "console"):
            (base / sub).mkdir(mode=0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def connection() -> Iterator[libvirt.virConnect]:
    """A connection of the test's own, to check libvirt's view beside the driver's."""
    conn = libvirt.open(URI)
    try:
        yield conn
    finally:
        conn.close()


def drop_pool(name: str) -> None:
    """Remove storage pool `name` with its volumes, if it exists."""
    with connection() as conn, contextlib.suppress(libvirt.libvirtError):
        pool = conn.storagePoolLookupByName(name)
        for vol in pool.listAllVolumes():
            vol.delete()
        pool.destroy()
        pool.undefine()


def libvirt_config(base: Path, pool: str) -> Config:
    """[libvirt] settings for a driver on the real libvirtd, its files under `base`."""
    cfg = Config()
    cfg.compute.image_cache_dir = str(base / "images")
    cfg.libvirt.uri = URI
    cfg.libvirt.virt_type = "qemu"
    cfg.libvirt.storage_pool = pool
    cfg.libvirt.storage_pool_path = str(base / "disks")
    cfg.libvirt.instances_path = str(base / "instances")
    cfg.libvirt.console_log_dir = str(base / "console")
    # The guest may not have booted far enough to honour the power button: a short
    # graceful wait, then the hard stop power_off falls back to.
    cfg.libvirt.shutdown_timeout = 3.0
    return cfg


class GuestImages:
    """The test guest's files as the agent's image cache would hold them: copied once
    into the host directory (QEMU reads them there) and returned by image id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for image_id, name in GUEST_FILES.items():
            target = root / image_id
            shutil.copyfile(GUEST / name, target)
            target.chmod(0o644)

    async def fetch(self, image: Image) -> Path:
        return await self.fetch_id(image.id)

    async def fetch_id(self, image_id: str) -> Path:
        return self.root / image_id


def guest_image() -> Image:
    return Image(
        id="guest",
        name="guest",
        disk_format="qcow2",
        properties={
            "kernel_id": "guest-kernel",
            "ramdisk_id": "guest-initrd",
            "os_command_line": "console=ttyS0 hvmesh.heartbeat=0",
        },
    )


@contextlib.asynccontextmanager
async def libvirt_peer(tmp: Path) -> AsyncIterator[Peer]:
    reason = unavailable()
    if reason is not None:
        raise PeerUnavailable(reason)
    pool = f"hvmesh-conformance-{uuid.uuid4().hex[:8]}"
    with host_dir() as base:
        cfg = libvirt_config(base, pool)
        images = GuestImages(base / "images")

        async def reopen(old: ComputeDriver) -> ComputeDriver:
            await old.cleanup_host()
            return await ready(LibvirtDriver(old.host, cfg), images)

        try:
            peer = Peer(
                name="libvirt",
                driver=await ready(LibvirtDriver("kvm-conformance", cfg), images),
                image=guest_image(),
                flavor=Flavor(id="f1", name="tiny", vcpus=1, ram_mb=192, disk_gb=1),
                bigger=Flavor(id="f2", name="small", vcpus=2, ram_mb=256, disk_gb=2),
                reopen=reopen,
            )
            try:
                yield peer
            finally:
                await peer.close()
        finally:
            drop_pool(pool)
