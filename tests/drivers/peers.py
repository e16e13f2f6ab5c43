"""The peers the driver conformance suite runs each driver against, by driver name.

A peer factory is an async context manager factory: given a scratch directory, it
yields a `Peer` whose driver is ready (init_host done, image source and power listener
set) and talks to its real peer (the fake driver to itself, in this process; libvirt to
the system libvirtd and QEMU), and removes everything it made on exit. A factory whose
peer is missing on this machine raises PeerUnavailable with the reason (the suite then
skips, which fails under CI=true).

Adding a driver to the suite is one entry in PEERS.
"""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvmesh.agents.driver import ComputeDriver
from hvmesh.agents.fake.driver import FakeDriver
from hvmesh.core.config import Config
from hvmesh.core.protocol.records import Flavor, Image, Server


class PeerUnavailable(Exception):
    """The driver's peer is not on this machine; the message says what is missing."""


async def _no_power(server_id: str, power_state: int) -> None:
    """The default power listener: the suite reads power states with get_info."""


@dataclass
class Peer:
    """A ready driver on its peer, and what the suite needs to drive it."""

    name: str
    driver: ComputeDriver
    #: What spawn boots (None for a driver that boots without one).
    image: Image | None
    #: A flavor the peer can run, and a larger one for resizes.
    flavor: Flavor
    bigger: Flavor
    #: A new driver for the same host and peer, as after an agent restart (the old one
    #: is cleaned up by `restart`).
    reopen: Callable[[ComputeDriver], Awaitable[ComputeDriver]]
    #: A driver of a second host on the same peer, for moves between hosts; None when
    #: the peer has one host.
    dest: ComputeDriver | None = None
    #: Each host holds at most one instance (a bare-metal node): the suite puts a second
    #: instance on `dest`, or runs the test's one-instance form.
    one_per_host: bool = False
    #: Server ids made through `server`, destroyed when the peer closes.
    made: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.driver.host

    def capable(self, capability: str) -> bool:
        return type(self.driver).capabilities.get(capability, False)

    def server(self, name: str = "conformance") -> Server:
        """A new server record placed on this peer's host, with the peer's flavor and image."""
        s = Server(
            id=str(uuid.uuid4()),
            name=name,
            project="demo",
            user="alice",
            flavor=self.flavor,
            image_id=self.image.id if self.image else "",
            image_name=self.image.name if self.image else "",
            image_properties=dict(self.image.properties) if self.image else {},
            vm_state="active",
            task_state=None,
            host=self.host,
        )
        self.made.append(s.id)
        return s

    async def restart(self) -> ComputeDriver:
        """Stop this host's driver and start a new one on the same peer."""
        self.driver = await self.reopen(self.driver)
        return self.driver

    async def clean(self) -> None:
        """Destroy what `server` made, on every host of the peer; errors are left to the
        peer's own cleanup."""
        for driver in (self.driver, self.dest):
            if driver is None:
                continue
            for server_id in self.made:
                with contextlib.suppress(Exception):
                    await driver.destroy(server_id)

    async def close(self) -> None:
        """Destroy what `server` made, then stop every driver of the peer."""
        await self.clean()
        for driver in (self.driver, self.dest):
            if driver is not None:
                await driver.cleanup_host()


PeerFactory = Callable[[Path], AbstractAsyncContextManager[Peer]]


async def ready(driver: ComputeDriver, images: Any = None) -> ComputeDriver:
    """What the agent runtime does before using a driver: image source, listener, init_host."""
    driver.image_cache = images
    driver.power_listener = _no_power
    await driver.init_host()
    return driver


# --- fake: an in-memory hypervisor in this process --------------------------------------


def fake_config() -> Config:
    cfg = Config()
    cfg.fake.spawn_delay = 0.0
    cfg.fake.destroy_delay = 0.0
    return cfg


async def _reopen_fake(old: ComputeDriver) -> ComputeDriver:
    """The fake hypervisor is the driver's own memory: a restarted agent finds what the
    old driver ran, as a real hypervisor keeps running its guests."""
    assert isinstance(old, FakeDriver)
    await old.cleanup_host()
    new = type(old)(old.host, old.config)
    new.instances, new.consoles = old.instances, old.consoles
    new.disks, new.interfaces = old.disks, old.interfaces
    return await ready(new)


@contextlib.asynccontextmanager
async def fake_peer(tmp: Path) -> AsyncIterator[Peer]:
    cfg = fake_config()
    peer = Peer(
        name="fake",
        driver=await ready(FakeDriver("fake-1", cfg)),
        image=Image(id="img-fake", name="cirros", disk_format="qcow2"),
        flavor=Flavor(id="f1", name="m1.small", vcpus=1, ram_mb=512, disk_gb=1),
        bigger=Flavor(id="f2", name="m1.medium", vcpus=2, ram_mb=1024, disk_gb=2),
        reopen=_reopen_fake,
        dest=await ready(FakeDriver("fake-2", cfg)),
    )
    try:
        yield peer
    finally:
        await peer.close()


# --- the registry -------------------------------------------------------------------------


def lazy(module: str, factory: str) -> PeerFactory:
    """A factory defined in `module`, imported only when a test asks for it (so a driver
    whose client library is missing does not stop the other drivers' tests)."""

    def open_peer(tmp: Path) -> AbstractAsyncContextManager[Peer]:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise PeerUnavailable(f"{module} cannot be imported: {exc}") from None
        made: AbstractAsyncContextManager[Peer] = getattr(mod, factory)(tmp)
        return made

    return open_peer


#: Driver name -> its peer factory. One entry per driver.
PEERS: dict[str, PeerFactory] = {
    "fake": fake_peer,
    "libvirt": lazy("tests.drivers.libvirt_peer", "libvirt_peer"),
    "vmware": lazy("tests.drivers.vmware_peer", "vmware_peer"),
    "hyperv": lazy("tests.drivers.hyperv_peer", "hyperv_peer"),
    "ironic": lazy("tests.drivers.ironic_peer", "ironic_peer"),
}
