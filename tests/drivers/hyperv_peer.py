"""The Hyper-V driver's peer: the WinRM test endpoint with its Hyper-V host model (tests/winrm), a fresh world per test.

The driver manages host HV1 (its `dest` driver HV2 of the same world), over HTTPS with
Basic authentication, verifying the endpoint's certificate through [hyperv] ca_file; it
boots a small VHDX image from a local file. Shared by the Hyper-V driver tests and the
conformance suite.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.hyperv.driver import HypervDriver
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Flavor, Image
from tests.drivers.peers import Peer, ready
from tests.winrm.peer import HypervSim, start_hyperv_sim

SWITCHES = ["physnet1:External", "physnet2:Internal"]
IMAGE_BYTES = b"vhdxfile" + b"hvmesh test disk\n" * 700  # more than one upload chunk


class LocalImages:
    """An image source holding one local file, counting fetches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fetches = 0

    async def fetch(self, image: Image) -> Path:
        self.fetches += 1
        return self.path

    async def fetch_id(self, image_id: str) -> Path:
        self.fetches += 1
        return self.path


def hyperv_config(sim: HypervSim, host: str = "HV1", **hyperv: Any) -> Config:
    """[hyperv] settings for a driver of `sim`'s host `host` (overrides in `hyperv`)."""
    cfg = Config()
    h = sim.host(host)
    cfg.hyperv.host, cfg.hyperv.port = "127.0.0.1", h.port
    cfg.hyperv.transport = "basic"
    cfg.hyperv.username, cfg.hyperv.password = sim.username, sim.password
    cfg.hyperv.ca_file = str(sim.ca_file)
    cfg.hyperv.connection_backoff = 0.1
    cfg.hyperv.connection_retries = 0
    cfg.hyperv.power_poll_interval = 0.2
    cfg.hyperv.upload_chunk = 4096
    cfg.compute.heartbeat_interval = 0.2  # how often the connection probes the host
    cfg.compute.physical_network_mappings = list(SWITCHES)
    for key, value in hyperv.items():
        setattr(cfg.hyperv, key, value)
    return cfg


def vhdx_image(tmp: Path) -> tuple[Image, LocalImages]:
    """A VHDX image and the image source that holds its file."""
    path = tmp / "image.vhdx"
    path.write_bytes(IMAGE_BYTES)
    image = Image(
        id="img-vhdx", name="tiny", disk_format="vhdx", status="active",
        checksum=hashlib.sha256(IMAGE_BYTES).hexdigest(), size=len(IMAGE_BYTES),
    )  # fmt: skip
    return image, LocalImages(path)


@contextlib.asynccontextmanager
async def hyperv_peer(tmp: Path) -> AsyncIterator[Peer]:
    sim = start_hyperv_sim(tmp / "winrm")
    try:
        image, images = vhdx_image(tmp)
        cfg = hyperv_config(sim)

        async def reopen(old: ComputeDriver) -> ComputeDriver:
            await old.cleanup_host()
            return await ready(HypervDriver(old.host, cfg), images)

        peer = Peer(
            name="hyperv",
            driver=await ready(HypervDriver("HV1", cfg), images),
            image=image,
            flavor=Flavor(id="f1", name="tiny", vcpus=1, ram_mb=256, disk_gb=1),
            bigger=Flavor(id="f2", name="small", vcpus=2, ram_mb=512, disk_gb=1),
            reopen=reopen,
            dest=await ready(HypervDriver("HV2", hyperv_config(sim, "HV2")), images),
        )
        try:
            yield peer
        finally:
            await peer.close()
    finally:
        sim.stop()
