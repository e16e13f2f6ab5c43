"""The Ironic driver's real peer: a standalone Ironic with fake hardware (tests/ironic_peer.py), a fresh one per test.

Two available nodes of resource class baremetal-gold; the driver is the provider of the
first, its `dest` of the second (each node holds one instance). The driver reaches Ironic
without auth, as [ironic] auth_type none. Shared by the Ironic driver tests and the
conformance suite.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.ironic.driver import IronicDriver
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Flavor, Image
from tests.drivers.peers import Peer, ready
from tests.ironic_peer import Ironic, start_ironic

#: Nova's bare-metal flavor: one unit of the node's class, none of the standard ones.
GOLD_SPECS = {
    "resources:CUSTOM_BAREMETAL_GOLD": "1",
    "resources:VCPU": "0",
    "resources:MEMORY_MB": "0",
    "resources:DISK_GB": "0",
}


def ironic_config(peer: Ironic, **ironic: Any) -> Config:
    """[ironic] settings for a driver on `peer` (overrides in `ironic`)."""
    cfg = Config()
    cfg.ironic.api_url = peer.endpoint
    cfg.ironic.auth_type = "none"
    cfg.ironic.poll_interval = 0.1
    cfg.ironic.deploy_timeout = 60.0
    cfg.compute.heartbeat_interval = 0.2  # how often the link lists the nodes
    for key, value in ironic.items():
        setattr(cfg.ironic, key, value)
    return cfg


def gold_flavor(fid: str = "bm-gold", name: str = "baremetal.gold") -> Flavor:
    return Flavor(id=fid, name=name, vcpus=8, ram_mb=16384, disk_gb=10, extra_specs=GOLD_SPECS)


def bm_image() -> Image:
    """An image Ironic deploys from a URL (fake hardware fetches nothing)."""
    return Image(
        id="img-bm", name="bm-image", disk_format="raw", status="active",
        properties={"image_source": "http://127.0.0.1:9/images/bm.raw"},
        checksum="ab" * 32,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def ironic_peer(tmp: Path) -> AsyncIterator[Peer]:
    ironic = start_ironic(tmp / "ironic")
    try:
        first, second = ironic.enroll(), ironic.enroll()
        cfg = ironic_config(ironic)

        async def reopen(old: ComputeDriver) -> ComputeDriver:
            await old.cleanup_host()
            return await ready(IronicDriver(old.host, cfg))

        peer = Peer(
            name="ironic",
            driver=await ready(IronicDriver(first, cfg)),
            image=bm_image(),
            flavor=gold_flavor(),
            bigger=gold_flavor("bm-gold-2", "baremetal.gold.2"),
            reopen=reopen,
            dest=await ready(IronicDriver(second, cfg)),
            one_per_host=True,
        )
        try:
            yield peer
        finally:
            await peer.close()
    finally:
        ironic.stop()
