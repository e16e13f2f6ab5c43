"""`hvmesh up`: the whole control plane on one box, on an embedded nats-server.

Starts nats-server with nats.conf and a local data directory, then the API, scheduler,
conductor, metadata service (on the same address as NATS unless told otherwise) and N
simulated hosts in this process; writes NATS CLI contexts for the admin and the demo
tenant; prints how to connect and the commands that boot a first server; stops
everything on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hvmesh.core import log
from hvmesh.core.api.service import ApiService
from hvmesh.core.bus import contexts
from hvmesh.core.bus.start_retry import RetryPolicy, StartGuard
from hvmesh.core.conductor.service import Conductor
from hvmesh.core.config import Config, NatsSection
from hvmesh.core.consoles.proxy import ConsoleProxy
from hvmesh.core.metadata.service import MetadataService
from hvmesh.core.ops import agent_credentials, launcher, natscluster, natsserver
from hvmesh.core.ops import tls as nats_tls
from hvmesh.core.protocol import subjects
from hvmesh.core.rest.app import RestService
from hvmesh.schedulers.service import SchedulerService

LOG = log.get_logger(__name__)
DRAIN_TIMEOUT = 10.0  # seconds the services' connection may take to drain when stopping
# The simulated hosts' one NATS user: one credential for the process that runs them all,
# permitted every simulated host's subjects (a real agent has a user per host).
FLEET_CREDENTIAL = "up-fake-hosts"
MONITOR_PORT = 8222  # NATS monitoring's usual port, taken when free and none is asked for

#: What the services run on: one nats-server, or a core cluster of them (`--cluster`).
Nats = natsserver.NatsServer | natscluster.NatsCluster


@dataclass(frozen=True)
class SiteLink:
    """`hvmesh up --site NAME --hub URL`: this box is site `name` of the core at `hub`
    (its leaf-node URL(s), with credentials), serving availability `zones`."""

    name: str
    hub: str
    zones: tuple[str, ...]


def write_contexts(server: Nats, site: str = "") -> dict[str, Path]:
    """The NATS CLI contexts of this deployment (a site's named hvmesh-<site>-...)."""
    made = {}
    for name, user, what in (
        ("hvmesh-admin", "admin", "hvmesh operator (admin project)"),
        ("hvmesh-demo", "demo", "hvmesh demo tenant (project DEMO)"),
        ("hvmesh-viewer", "viewer", "hvmesh demo tenant's reader (project DEMO)"),
        ("hvmesh-alt", "alt", "hvmesh second tenant (project ALT)"),
    ):
        if site:
            name, what = name.replace("hvmesh-", f"hvmesh-{site}-", 1), f"{what}, site {site}"
        made[name] = contexts.write(
            name,
            contexts.Context(
                url=server.address,
                user=user,
                password=server.passwords[user],
                ca=str(server.tls.ca) if server.tls else "",
                description=what,
            ),
        )
    return made


def cli_command() -> str:
    """How a shell runs this hvmesh: `hvmesh` when PATH finds this very program, else its path."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "hvmesh" or not argv0.is_file():  # run as `python -m hvmesh.core.cli.main`
        return shlex.join([sys.executable, "-m", "hvmesh.core.cli.main"])
    on_path = shutil.which("hvmesh")
    if on_path and os.path.samefile(on_path, argv0):
        return "hvmesh"
    return shlex.quote(str(argv0.absolute()))


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def banner(
    server: Nats,
    fake_hosts: int,
    made: dict[str, Path],
    metadata_address: str,
    metadata_port: int,
    hvmesh: str | None = None,
    nats_cli: bool | None = None,
    rest_auth_url: str | None = None,
    console_url: str | None = None,
    site: str = "",
) -> str:
    """What `hvmesh up` prints once it is up.

    Every line indented by four spaces under a heading other than the contexts' is a
    command that works as printed, in the order printed, on a fresh deployment: `hvmesh`
    is named as this shell finds it (`hvmesh` or its path) and the nats CLI is suggested
    only when it is on PATH.
    """
    base = hvmesh or cli_command()
    ctx = f"hvmesh-{site}" if site else "hvmesh"  # a site's contexts: hvmesh-<site>-admin, ...
    hv = f"{base} --context {ctx}-admin" if site else base
    if nats_cli is None:
        nats_cli = shutil.which("nats") is not None
    demo_create = (
        'req hvmesh.api.servers.create \'{"name":"vm2","flavor":"m1.small","image":"cirros"}\''
    )
    operator = [
        f"{hv} flavor create m1.small --vcpus 1 --ram 512 --disk 1",
        f"{hv} image create cirros --disk-format qcow2",
        f"{hv} network create net1 --cidr 10.0.0.0/24 --shared",
    ]
    if fake_hosts > 0:
        operator += [
            f"{hv} server create vm1 --flavor m1.small --image cirros --network net1 --wait",
            f"{hv} server list",
            f"{hv} console url vm1 --type serial",
        ]
    operator.append(f"{hv} hypervisor list")
    if nats_cli:
        operator.append(f"nats --context {ctx}-admin micro ls")
    if isinstance(server, natscluster.NatsCluster):
        nats_line = (
            f"hvmesh is up: NATS cluster of {len(server.nodes)} nodes at {server.address} "
            f"(every stream and bucket kept {len(server.nodes)} times; leaf nodes: ports "
            f"{server.ports_for('leaf_port')}), "
        )
        monitor = f"ports {server.ports_for('monitor_port')} of 127.0.0.1"
    else:
        nats_line = (
            f"hvmesh is up: NATS at {server.address} (leaf nodes: port {server.leaf_port}), "
        )
        monitor = f"http://127.0.0.1:{server.monitor_port}/varz"
    lines = [
        nats_line + f"{fake_hosts} simulated host(s), metadata service at "
        f"http://{_url_host(metadata_address)}:{metadata_port}, NATS monitoring at {monitor}"
        + (f" (TLS: clients check NATS against {server.tls.ca})." if server.tls else "."),
        *(
            [f"  OpenStack clients (openstack CLI, openstacksdk): OS_AUTH_URL={rest_auth_url}"]
            if rest_auth_url
            else []
        ),
        *(
            [f"  Consoles (hvmesh console SERVER, console url SERVER): proxy at {console_url}"]
            if console_url
            else []
        ),
        *([] if site else [hub_line(server)]),
        "",
        "  NATS CLI contexts written:",
        *(f"    {name:<13} {path}" for name, path in made.items()),
        "",
        "  In another shell, as the operator (hvmesh's CLI uses the hvmesh-admin context):"
        if not site
        else f"  In another shell, as the site's operator (its context {ctx}-admin):",
        *(f"    {command}" for command in operator),
        "",
    ]
    if fake_hosts > 0:
        raw = f"nats --context {ctx}-demo {demo_create}"
        if not nats_cli:
            raw = f"{base} --context {ctx}-demo {demo_create}"
        lines += [
            "  Then as the demo tenant (project DEMO):",
            f"    {raw}",
            f"    {base} --context {ctx}-demo server list",
            "",
        ]
    else:
        lines += ["  No hosts: start an agent (hvmesh agent) before booting a server.", ""]
    lines.append(f"  Logs: {server.log_path.parent}   Stop: Ctrl-C")
    return "\n".join(lines)


def hub_line(server: Nats) -> str:
    """How a site joins this core: its leaf-node URLs, the password left for the reader."""
    if isinstance(server, natscluster.NatsCluster):
        ports = server.ports_for("leaf_port").split(",")
    else:
        ports = [str(server.leaf_port)]
    scheme = "tls" if server.tls else "nats-leaf"
    host = _url_host(server.host)
    urls = ",".join(f"{scheme}://hvmesh:PASSWORD@{host}:{port}" for port in ports)
    secrets = server.log_path.parent / "secrets.json"
    if isinstance(server, natscluster.NatsCluster):
        secrets = server.data_dir / "secrets.json"
    return (
        f"  Sites join this core (docs/sites.md): hvmesh up --site NAME --hub {urls} "
        f'(PASSWORD: "service" in {secrets})'
    )


def fleet_settings(cfg: Config, data_dir: Path) -> NatsSection:
    """The simulated hosts' [nats] settings: their NKEY user instead of the services' password."""
    seed = data_dir / agent_credentials.SEED_DIR / f"{FLEET_CREDENTIAL}.nk"
    return msgspec.structs.replace(
        cfg.nats,
        user="",
        password="",
        nkey=str(seed),
        inbox_prefix=subjects.agent_inbox(FLEET_CREDENTIAL),
    )


def tls_files(
    data_dir: Path, listen: str, demo: bool, cert: str = "", key: str = "", ca: str = ""
) -> nats_tls.TlsFiles | None:
    """The operator's certificates when given, else with `demo` a demo CA's; else no TLS."""
    if cert or key or ca:
        return nats_tls.TlsFiles.given(cert, key, ca)
    if demo:
        return nats_tls.demo_certificates(data_dir / nats_tls.DEMO_DIR, [listen])
    return None


def _processes(server: Nats) -> list[natsserver.NatsServer]:
    if isinstance(server, natscluster.NatsCluster):
        return [n.server for n in server.nodes if n.server is not None]
    return [server]


def _alive(server: Nats) -> bool:
    return any(p.process.poll() is None for p in _processes(server))


async def _stop_when_exits(server: Nats, stop: asyncio.Event) -> None:
    """Stop everything if nats-server dies under us: the services cannot work without it.

    A cluster carries on while any node runs (with a quorum, JetStream too); each node
    that exits is logged.
    """

    async def watch(node: natsserver.NatsServer) -> None:
        await asyncio.to_thread(node.process.wait)
        LOG.error("up.nats_server_exited", code=node.process.returncode, log=str(node.log_path))

    await asyncio.gather(*(watch(p) for p in _processes(server)))
    stop.set()


async def start_nats(
    data_dir: Path,
    nats_port: int,
    leaf_port: int,
    listen: str,
    monitor_port: int,
    tls_files: nats_tls.TlsFiles | None,
    cluster: int,
    site: SiteLink | None = None,
) -> Nats:
    """One nats-server, or with `cluster` that many nodes: the first on the given ports,
    the others on the next ports up where they are free. With `site`, the one server is
    that site's, joined to its core."""
    if not cluster:
        return await natsserver.start(
            data_dir,
            port=nats_port,
            leaf_port=leaf_port,
            host=listen,
            tied=True,
            monitor_port=monitor_port,
            tls_files=tls_files,
            name=f"hvmesh-{site.name}" if site else "hvmesh",  # unique among the core's leaves
            domain=site.name if site else subjects.CORE_DOMAIN,
            hub=site.hub if site else "",
        )
    taken: set[int] = set()

    def near(first: int) -> list[int]:
        chosen = [first]
        for i in range(1, cluster):
            port = first + i
            if first == 0 or port in taken or not natsserver.port_free(port, listen):
                port = natsserver.free_port(avoid=taken | set(chosen))
            chosen.append(port)
        taken.update(chosen)
        return chosen

    return await natscluster.start(
        data_dir,
        nodes=cluster,
        ports=near(nats_port),
        leaf_ports=near(leaf_port),
        monitor_ports=near(monitor_port or natsserver.free_port()),
        host=listen,
        tied=True,
        tls_files=tls_files,
    )


async def up(
    cfg: Config,
    data_dir: Path,
    nats_port: int,
    leaf_port: int,
    fake_hosts: int,
    listen: str = "127.0.0.1",
    metadata_listen: str | None = None,
    monitor_port: int | None = None,
    tls_files: nats_tls.TlsFiles | None = None,
    cluster: int = 0,
    site: SiteLink | None = None,
) -> None:
    """Run everything until SIGINT/SIGTERM; the metadata service binds on `metadata_listen`,
    else on `listen` (the NATS client address).

    NATS monitoring listens on 127.0.0.1:`monitor_port` (by default 8222, or a free port
    when something else holds 8222, as the banner says); with `tls_files`, NATS takes
    clients and leaf nodes over TLS only and every service checks it against their CA.
    The simulated hosts connect as their own NKEY user (FLEET_CREDENTIAL). With `cluster`
    (3 or 5), NATS is a cluster of that many nodes and every stream and bucket is kept
    on as many ([nats] replicas). With `site`, this box is a site of the core at
    `site.hub` (docs/sites.md): its own JetStream domain, its simulated hosts in its zone.
    A signal at any moment of the start stops what has started, nats-server included, and
    raises launcher.StoppedWhileStarting; so does an error, which is raised as it is.
    """
    if site is not None:
        cfg = site_config(cfg, site)
    if fake_hosts:
        agent_credentials.issue(
            data_dir, FLEET_CREDENTIAL, launcher.fake_names(fake_hosts, host_prefix(cfg))
        )
    else:
        agent_credentials.revoke(data_dir, FLEET_CREDENTIAL)
    if monitor_port is None:
        monitor_port = MONITOR_PORT if natsserver.port_free(MONITOR_PORT) else 0
    stop = asyncio.Event()
    with launcher.signals(stop):
        server = await launcher.until_stopped(
            start_nats(
                data_dir, nats_port, leaf_port, listen, monitor_port, tls_files, cluster, site
            ),
            stop,
        )
        if cluster:
            cfg = msgspec.structs.replace(
                cfg, nats=msgspec.structs.replace(cfg.nats, replicas=cluster)
            )
        try:
            await _run(server, cfg, data_dir, fake_hosts, metadata_listen or listen, stop)
        except launcher.StoppedWhileStarting:
            if not _alive(server):  # not a signal: nats-server died
                raise _exited(server) from None
            raise
        finally:
            server.stop()
    print("hvmesh stopped.", file=sys.stderr, flush=True)


def site_config(cfg: Config, site: SiteLink) -> Config:
    """`cfg` for site `site`: its [site] section, and its hosts in its first zone."""
    zones = list(site.zones) or [site.name]
    return msgspec.structs.replace(
        cfg,
        site=msgspec.structs.replace(cfg.site, name=site.name, availability_zones=zones),
        compute=msgspec.structs.replace(cfg.compute, availability_zone=zones[0]),
    )


def host_prefix(cfg: Config) -> str:
    """The simulated hosts' name prefix: fake, or <site>-fake at a site."""
    return f"{cfg.site.name}-fake" if cfg.site.name else "fake"


def _exited(server: Nats) -> natsserver.NatsServerError:
    codes = ", ".join(str(p.process.returncode) for p in _processes(server))
    return natsserver.NatsServerError(f"nats-server exited (code {codes}); see {server.log_path}")


async def _run(
    server: Nats,
    cfg: Config,
    data_dir: Path,
    fake_hosts: int,
    metadata_listen: str,
    stop: asyncio.Event,
) -> None:
    """The services on `server` until `stop`; their starts retried as `cfg` says."""
    cfg = msgspec.structs.replace(
        cfg,
        nats=msgspec.structs.replace(
            cfg.nats,
            url=server.address,
            user="hvmesh",
            password=server.passwords["service"],
            tls_ca=str(server.tls.ca) if server.tls else cfg.nats.tls_ca,
        ),
        metadata=msgspec.structs.replace(cfg.metadata, listen=metadata_listen),
        # The REST front door on loopback: its port if free, else any free one (the banner
        # prints which).
        rest=msgspec.structs.replace(
            cfg.rest,
            listen="127.0.0.1",
            port=cfg.rest.port if natsserver.port_free(cfg.rest.port) else 0,
        ),
        # The console proxy likewise; its port is chosen now, since the API writes it
        # into the console URLs it hands out.
        console=msgspec.structs.replace(
            cfg.console,
            listen="127.0.0.1",
            port=cfg.console.port
            if natsserver.port_free(cfg.console.port)
            else natsserver.free_port(),
        ),
    )
    if not cfg.compute.image_cache_dir:  # simulated hosts cache images under data_dir
        cfg = msgspec.structs.replace(
            cfg,
            compute=msgspec.structs.replace(cfg.compute, image_cache_dir=str(data_dir / "images")),
        )
    watchdog = asyncio.create_task(_stop_when_exits(server, stop))
    try:
        guard = StartGuard(RetryPolicy(timeout=cfg.DEFAULT.start_timeout))
        nc = await launcher.until_stopped(guard.connect(cfg.nats, "hvmesh-up"), stop)
        hosts_nc, hosts_cfg = nc, cfg
        try:
            if fake_hosts:
                fleet_nats = fleet_settings(cfg, data_dir)
                hosts_nc = await launcher.until_stopped(
                    guard.connect(fleet_nats, "hvmesh-up-hosts"), stop
                )
                hosts_cfg = msgspec.structs.replace(cfg, nats=fleet_nats)
            plugins = launcher.load_plugins(cfg)  # once, for the scheduler and the hosts
            metadata = guard.component("metadata", lambda: MetadataService(nc, cfg))
            rest = guard.component("rest", lambda: RestService(nc, cfg))
            consoles = guard.component("console-proxy", lambda: ConsoleProxy(nc, cfg))
            components: list[launcher.Component] = [
                guard.component("api", lambda: ApiService(nc, cfg)),
                guard.component("scheduler", lambda: SchedulerService(nc, cfg, plugins)),
                guard.component("conductor", lambda: Conductor(nc, cfg)),
                metadata,
                rest,
                consoles,
                launcher.retried_fleet(
                    guard, hosts_nc, hosts_cfg, fake_hosts, host_prefix(cfg), registry=plugins
                )
                if fake_hosts
                else launcher.Fleet([]),
            ]
            made = write_contexts(server, cfg.site.name)

            def ready() -> None:
                assert metadata.current is not None
                address, port = metadata.current.address, metadata.current.port
                auth_url = rest.current.auth_url if rest.current is not None else None
                site = cfg.site.name
                text = banner(
                    server,
                    fake_hosts,
                    made,
                    address,
                    port,
                    rest_auth_url=auth_url,
                    console_url=cfg.console.url(),
                    site=site,
                )
                if site:
                    zones = ", ".join(cfg.site.zones())
                    text = f"Site {site} (JetStream domain {site}, zones {zones}): " + text
                print(text, flush=True)

            await launcher.serve(components, on_ready=ready, stop=stop)
        finally:
            for connection in {hosts_nc, nc}:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(DRAIN_TIMEOUT):
                        await connection.drain()
    finally:
        watchdog.cancel()
    if not _alive(server):
        raise _exited(server)
