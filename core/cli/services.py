"""`hvmesh up|api|rest|console-proxy|conductor|scheduler|metadata|agent` and `config sample`: running the services."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from hvmesh.core import config, log
from hvmesh.core.cli import lazy
from hvmesh.core.cli.args import add_cluster_option, check_cluster
from hvmesh.core.cli.connect import nats_settings
from hvmesh.core.cli.errors import CliError
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.sites import SITE_NAME

DRAIN_TIMEOUT = 10.0  # seconds a service's connection may take to drain when stopping

# Imported when first used: parsing the command line (and --help) needs none of them.
if TYPE_CHECKING:
    from hvmesh.core.api import service as api_service
    from hvmesh.core.bus import start_retry
    from hvmesh.core.conductor import service as conductor_service
    from hvmesh.core.consoles import proxy as console_proxy
    from hvmesh.core.metadata import service as metadata_service
    from hvmesh.core.ops import launcher
    from hvmesh.core.ops import up as ops_up
    from hvmesh.core.rest import app as rest_app
    from hvmesh.schedulers import service as scheduler_service
else:
    api_service = lazy.module("hvmesh.core.api.service")
    conductor_service = lazy.module("hvmesh.core.conductor.service")
    start_retry = lazy.module("hvmesh.core.bus.start_retry")
    launcher = lazy.module("hvmesh.core.ops.launcher")
    metadata_service = lazy.module("hvmesh.core.metadata.service")
    ops_up = lazy.module("hvmesh.core.ops.up")
    rest_app = lazy.module("hvmesh.core.rest.app")
    console_proxy = lazy.module("hvmesh.core.consoles.proxy")
    scheduler_service = lazy.module("hvmesh.schedulers.service")


def service_config(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config)
    if getattr(args, "strict_plugins", False):
        cfg = msgspec.structs.replace(
            cfg, plugins=msgspec.structs.replace(cfg.plugins, strict=True)
        )
    if args.url or args.context:
        cfg = msgspec.structs.replace(cfg, nats=nats_settings(args))
    log.setup("debug" if args.debug else cfg.DEFAULT.log_level, fmt=cfg.DEFAULT.log_format)
    return cfg


Build = Callable[[Any, config.Config, "start_retry.StartGuard"], list[Any]]


def run_service(args: argparse.Namespace, build: Build) -> None:
    """Connect and start what `build` makes, retrying transient NATS trouble, until a signal."""
    cfg = service_config(args)
    if cfg.plugins.strict:  # a plugin that fails stops the service before it connects
        launcher.load_plugins(cfg)
    name = f"hvmesh-{args.command}"

    async def main() -> None:
        stop = asyncio.Event()
        with launcher.signals(stop):
            guard = start_retry.StartGuard(
                start_retry.RetryPolicy(timeout=cfg.DEFAULT.start_timeout)
            )
            nc = await launcher.until_stopped(guard.connect(cfg.nats, name), stop)
            try:
                await launcher.serve(build(nc, cfg, guard), stop=stop)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(DRAIN_TIMEOUT):
                        await nc.drain()

    starting(args, lambda: launcher.run(main()))


def starting(args: argparse.Namespace, run: Callable[[], None]) -> None:
    """Run a service command; a start that failed or was stopped is one line and status 1."""
    try:
        run()
    except start_retry.StartFailed as exc:
        raise CliError(str(exc)) from exc
    except launcher.StoppedWhileStarting:
        raise CliError(f"hvmesh {args.command}: stopped while starting") from None


def cmd_api(args: argparse.Namespace) -> None:
    service = api_service.ApiService  # read now: its module loads before connecting
    run_service(args, lambda nc, cfg, guard: [guard.component("api", lambda: service(nc, cfg))])


def cmd_console_proxy(args: argparse.Namespace) -> None:
    service = console_proxy.ConsoleProxy  # read now: its module loads before connecting
    run_service(
        args, lambda nc, cfg, guard: [guard.component("console-proxy", lambda: service(nc, cfg))]
    )


def cmd_rest(args: argparse.Namespace) -> None:
    service = rest_app.RestService  # read now: its module loads before connecting
    run_service(args, lambda nc, cfg, guard: [guard.component("rest", lambda: service(nc, cfg))])


def cmd_conductor(args: argparse.Namespace) -> None:
    service = conductor_service.Conductor  # read now: its module loads before connecting
    run_service(
        args, lambda nc, cfg, guard: [guard.component("conductor", lambda: service(nc, cfg))]
    )


def cmd_scheduler(args: argparse.Namespace) -> None:
    service = scheduler_service.SchedulerService  # read now: its module loads before connecting
    run_service(
        args, lambda nc, cfg, guard: [guard.component("scheduler", lambda: service(nc, cfg))]
    )


def cmd_metadata(args: argparse.Namespace) -> None:
    service = metadata_service.MetadataService  # read now: its module loads before connecting

    def build(nc: Any, cfg: config.Config, guard: start_retry.StartGuard) -> list[Any]:
        if args.metadata_listen is not None:
            cfg = msgspec.structs.replace(
                cfg, metadata=msgspec.structs.replace(cfg.metadata, listen=args.metadata_listen)
            )
        return [guard.component("metadata", lambda: service(nc, cfg))]

    run_service(args, build)


def cmd_agent(args: argparse.Namespace) -> None:
    if args.count > 1 and args.driver != "fake":
        raise CliError("--count is for the fake driver only")
    # The driver is loaded before connecting: a missing hypervisor library is one line now.
    registry = launcher.load_plugins(service_config(args))
    registry.driver(args.driver)

    def build(nc: Any, cfg: config.Config, guard: start_retry.StartGuard) -> list[Any]:
        if args.count > 1:
            prefix = args.host or "fake"
            return [launcher.retried_fleet(guard, nc, cfg, args.count, prefix, registry)]
        host = args.host or cfg.host_name()
        return [launcher.retried_agent(guard, nc, cfg, args.driver, host, registry)]

    run_service(args, build)


def cmd_up(args: argparse.Namespace) -> None:
    if args.url or args.context:
        raise CliError(
            "hvmesh up runs its own nats-server: --url and --context are for other commands"
        )
    cfg = service_config(args)
    if args.metadata_port is not None:
        cfg = msgspec.structs.replace(
            cfg, metadata=msgspec.structs.replace(cfg.metadata, port=args.metadata_port)
        )
    if args.fake_hosts < 0:
        raise CliError("--fake-hosts must be 0 or more")
    check_cluster(args.cluster)
    site = site_link(args)
    if args.monitor_port is not None and not 0 <= args.monitor_port < 65536:
        raise CliError("--monitor-port must be a TCP port (1-65535, or 0 for any free one)")
    data_dir = Path(args.data_dir).expanduser()
    try:
        tls_files = ops_up.tls_files(
            data_dir, args.listen, args.tls, args.tls_cert, args.tls_key, args.tls_ca
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    starting(
        args,
        lambda: launcher.run(
            ops_up.up(
                cfg,
                data_dir=data_dir,
                nats_port=args.nats_port,
                leaf_port=args.leaf_port,
                fake_hosts=args.fake_hosts,
                listen=args.listen,
                metadata_listen=args.metadata_listen,
                monitor_port=args.monitor_port,
                tls_files=tls_files,
                cluster=args.cluster,
                site=site,
            )
        ),
    )


def site_link(args: argparse.Namespace) -> ops_up.SiteLink | None:
    """`--site NAME --hub URL [--zone AZ ...]`, checked; None without --site."""
    if not args.site:
        if args.hub or args.zone:
            raise CliError("--hub and --zone are for a site: give --site NAME too")
        return None
    if not re.fullmatch(SITE_NAME, args.site) or args.site == subjects.CORE_DOMAIN:
        raise CliError(
            f"--site {args.site!r}: a site's name is 1-32 letters, digits, - or _ "
            f"(not {subjects.CORE_DOMAIN!r}, the core's)"
        )
    if not args.hub:
        raise CliError("--site needs --hub URL: the core's leaf-node URL, with credentials")
    if args.cluster:
        raise CliError("--site runs one nats-server: not with --cluster")
    return ops_up.SiteLink(name=args.site, hub=args.hub, zones=tuple(args.zone or []))


def cmd_config_sample(args: argparse.Namespace) -> None:
    print(config.sample())


def add_parsers(sub: Any, leaf: Any) -> None:
    """`up`, the service commands and `config sample`."""
    p = leaf(sub, "up", cmd_up, "run everything on this box: nats-server, services, fake hosts")
    up_parser = p
    p.add_argument("--data-dir", default="~/.local/share/hvmesh", help="state directory")
    p.add_argument("--nats-port", type=int, default=4222)
    p.add_argument("--leaf-port", type=int, default=7422)
    p.add_argument("--listen", default="127.0.0.1", help="address NATS clients connect to")
    p.add_argument("--fake-hosts", type=int, default=3, help="simulated hypervisor hosts")
    p.add_argument(
        "--metadata-port", type=int, help="metadata service port (default: [metadata] port)"
    )
    p.add_argument(
        "--metadata-listen",
        metavar="ADDR",
        help="address the metadata service listens on (default: --listen)",
    )
    p.add_argument(
        "--monitor-port",
        type=int,
        help="NATS monitoring port, on 127.0.0.1, for nats server report and the Prometheus "
        "exporter (default: 8222 if free, else any free port; 0: any free port)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="NATS over TLS for clients and leaf nodes, with a demo CA made in the data dir",
    )
    p.add_argument("--tls-cert", default="", help="your own server certificate (PEM), for TLS")
    p.add_argument("--tls-key", default="", help="its key (PEM)")
    p.add_argument("--tls-ca", default="", help="the CA (PEM) clients check the server against")
    add_cluster_option(p, "the core survives losing a node (docs/sites.md)")
    p.add_argument(
        "--site",
        metavar="NAME",
        help="make this box a site (Nova's cell) of the core at --hub, with its own "
        "JetStream domain NAME (docs/sites.md)",
    )
    p.add_argument(
        "--hub",
        metavar="URL",
        help="the core's leaf-node URL(s), comma-separated, with the core's service "
        "credentials: nats-leaf://hvmesh:PASSWORD@core:7422",
    )
    p.add_argument(
        "--zone",
        action="append",
        metavar="AZ",
        help="an availability zone this site serves (repeatable; default: the site's name)",
    )

    services = [
        leaf(sub, "api", cmd_api, "run the API service"),
        leaf(sub, "rest", cmd_rest, "run the OpenStack REST API (Keystone v3 tokens, compute)"),
        leaf(sub, "console-proxy", cmd_console_proxy, "run the console proxy (noVNC, serial)"),
        leaf(sub, "conductor", cmd_conductor, "run a conductor"),
        leaf(sub, "scheduler", cmd_scheduler, "run a scheduler"),
        leaf(sub, "metadata", cmd_metadata, "run the metadata service guests read (cloud-init)"),
        leaf(sub, "agent", cmd_agent, "run a hypervisor agent"),
    ]
    p = services[-1]
    p.add_argument("--driver", default="fake", help="driver name (fake, ...)")
    p.add_argument("--host", help="host name (default: [compute] host or the machine's)")
    p.add_argument("--count", type=int, default=1, help="fake driver: run this many hosts")
    for p in [*services, up_parser]:
        p.add_argument(
            "--strict-plugins",
            action="store_true",
            help="fail when a plugin fails to load (default: log it and skip the plugin)",
        )

    sub.choices["metadata"].add_argument(
        "--metadata-listen",
        metavar="ADDR",
        help="address to listen on (default: [metadata] listen)",
    )

    cfg = sub.add_parser("config", help="configuration").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(cfg, "sample", cmd_config_sample, "print every option with its default and help")
