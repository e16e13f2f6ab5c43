"""`hvmesh up`: the whole control plane on one box, on an embedded nats-server.

Starts nats-server with nats.conf and a local data directory, then the API, scheduler
and conductor and N simulated hosts in this process; writes NATS CLI contexts for the
admin and the demo tenant; prints how to connect; stops everything on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import msgspec

from hvmesh.core import bus, contexts, launcher, log, natsserver
from hvmesh.core.api import ApiService
from hvmesh.core.conductor import Conductor
from hvmesh.core.config import Config
from hvmesh.core.metadata_service import MetadataService
from hvmesh.schedulers.service import SchedulerService

LOG = log.get_logger(__name__)


def write_contexts(server: natsserver.NatsServer) -> dict[str, Path]:
    made = {}
    for name, user, what in (
        ("hvmesh-admin", "admin", "hvmesh operator (admin project)"),
        ("hvmesh-demo", "demo", "hvmesh demo tenant (project DEMO)"),
    ):
        made[name] = contexts.write(
            name,
            contexts.Context(
                url=server.address,
                user=user,
                password=server.passwords[user],
                description=what,
            ),
        )
    return made


def banner(
    server: natsserver.NatsServer, fake_hosts: int, made: dict[str, Path], metadata_port: int
) -> str:
    return "\n".join(
        [
            f"hvmesh is up: NATS at {server.address} (leaf nodes: port {server.leaf_port}), "
            f"{fake_hosts} simulated host(s), metadata service on port {metadata_port}.",
            "",
            "  NATS CLI contexts written:",
            *(f"    {name:<13} {path}" for name, path in made.items()),
            "",
            "  As the operator (hvmesh's CLI uses the hvmesh-admin context by default):",
            "    hvmesh flavor create m1.small --vcpus 1 --ram 512 --disk 1",
            "    hvmesh image create cirros --file cirros.qcow2 --disk-format qcow2",
            "    hvmesh network create net1 --cidr 10.0.0.0/24 --shared",
            "    hvmesh server create vm1 --flavor m1.small --image cirros --network net1 --wait",
            "    hvmesh hypervisor list",
            "    nats --context hvmesh-admin micro ls",
            "",
            "  As the demo tenant:",
            "    nats --context hvmesh-demo req hvmesh.api.servers.create "
            '\'{"name":"vm2","flavor":"m1.small","image":"cirros"}\'',
            "    hvmesh --context hvmesh-demo server list",
            "",
            f"  Logs: {server.log_path.parent}   Stop: Ctrl-C",
        ]
    )


async def _stop_when_exits(server: natsserver.NatsServer, stop: asyncio.Event) -> None:
    """Stop everything if nats-server dies under us: the services cannot work without it."""
    await asyncio.to_thread(server.process.wait)
    LOG.error("up.nats_server_exited", code=server.process.returncode)
    stop.set()


async def up(
    cfg: Config,
    data_dir: Path,
    nats_port: int,
    leaf_port: int,
    fake_hosts: int,
    listen: str = "127.0.0.1",
) -> None:
    server = await natsserver.start(data_dir, port=nats_port, leaf_port=leaf_port, host=listen)
    try:
        cfg = msgspec.structs.replace(
            cfg,
            nats=msgspec.structs.replace(
                cfg.nats, url=server.address, user="hvmesh", password=server.passwords["service"]
            ),
        )
        if not cfg.compute.image_cache_dir:  # simulated hosts cache images under data_dir
            cfg = msgspec.structs.replace(
                cfg,
                compute=msgspec.structs.replace(
                    cfg.compute, image_cache_dir=str(data_dir / "images")
                ),
            )
        nc = await bus.connect(cfg.nats, "hvmesh-up")
        metadata = MetadataService(nc, cfg)
        components: list[launcher.Component] = [
            ApiService(nc, cfg),
            SchedulerService(nc, cfg),
            Conductor(nc, cfg),
            metadata,
            *launcher.fake_fleet(nc, cfg, fake_hosts),
        ]
        made = write_contexts(server)

        def ready() -> None:
            print(banner(server, fake_hosts, made, metadata.port), flush=True)

        stop = asyncio.Event()
        watchdog = asyncio.create_task(_stop_when_exits(server, stop))
        try:
            await launcher.serve(components, on_ready=ready, stop=stop)
        finally:
            watchdog.cancel()
            with contextlib.suppress(Exception):
                await nc.drain()
        if server.process.poll() is not None:
            raise natsserver.NatsServerError(
                f"nats-server exited (code {server.process.returncode}); see {server.log_path}"
            )
    finally:
        server.stop()
        print("hvmesh stopped.", file=sys.stderr, flush=True)
