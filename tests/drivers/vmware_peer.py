"""The VMware driver's real peer: govmomi's vCenter simulator (tests/vcsim_peer.py), a fresh one per test.

The driver manages cluster DC0_C0 (its `dest` cluster DC0_C1 of the same vCenter),
verifies the simulator's certificate through [vmware] ca_file, and boots a small raw
image from a local file. Shared by the VMware driver tests and the conformance suite.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.vmware.driver import VmwareDriver
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Flavor, Image
from tests.drivers.peers import Peer, ready
from tests.vcsim_peer import Vcsim, start_vcsim

CLUSTER = "DC0_C0"
PORTGROUPS = ["physnet1:DC0_DVPG0", "physnet2:DC0_DVPG1"]
IMAGE_BYTES = b"hvmesh raw image\n" * 100


class LocalImages:
    """An image source holding one local file, counting fetches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fetches = 0

    async def fetch(self, image: Image) -> Path:
        self.fetches += 1
        return self.path

    async def fetch_id(self, image_id: str) -> Path:
        raise AssertionError("the VMware driver fetches no kernel or ramdisk")


def vmware_config(sim: Vcsim, **vmware: Any) -> Config:
    """[vmware] settings for a driver on `sim`'s cluster DC0_C0 (overrides in `vmware`)."""
    cfg = Config()
    cfg.vmware.host, cfg.vmware.port = sim.host, sim.port
    cfg.vmware.username, cfg.vmware.password = sim.username, sim.password
    cfg.vmware.ca_file = str(sim.cert)
    cfg.vmware.cluster = CLUSTER
    cfg.vmware.task_poll_interval = 0.05
    cfg.vmware.connection_backoff = 0.1
    cfg.vmware.connection_retries = 0
    cfg.compute.heartbeat_interval = 0.2  # how often the session probes vCenter
    cfg.compute.physical_network_mappings = list(PORTGROUPS)
    for key, value in vmware.items():
        setattr(cfg.vmware, key, value)
    return cfg


def raw_image(tmp: Path) -> tuple[Image, LocalImages]:
    """A raw image and the image source that holds its file."""
    path = tmp / "image.raw"
    path.write_bytes(IMAGE_BYTES)
    image = Image(
        id="img-raw", name="tiny", disk_format="raw", status="active",
        checksum="c0ffee" * 10 + "abcd", size=len(IMAGE_BYTES),
    )  # fmt: skip
    return image, LocalImages(path)


@contextlib.asynccontextmanager
async def vmware_peer(tmp: Path) -> AsyncIterator[Peer]:
    sim = start_vcsim(tmp / "vcsim")
    try:
        image, images = raw_image(tmp)
        cfg = vmware_config(sim)

        async def reopen(old: ComputeDriver) -> ComputeDriver:
            await old.cleanup_host()
            return await ready(VmwareDriver(old.host, cfg), images)

        dest_cfg = vmware_config(sim, cluster="DC0_C1")
        peer = Peer(
            name="vmware",
            driver=await ready(VmwareDriver("vc-c0", cfg), images),
            image=image,
            flavor=Flavor(id="f1", name="tiny", vcpus=1, ram_mb=256, disk_gb=1),
            bigger=Flavor(id="f2", name="small", vcpus=2, ram_mb=512, disk_gb=2),
            reopen=reopen,
            dest=await ready(VmwareDriver("vc-c1", dest_cfg), images),
        )
        try:
            yield peer
        finally:
            await peer.close()
    finally:
        sim.stop()
