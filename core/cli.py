"""The `hvmesh` command: run the services, and talk to a running deployment.

Connection: --url/--user/--password, else --context NAME or $HVMESH_CONTEXT (a NATS CLI
context), else the context `nats context select` chose, else the "hvmesh-admin" context
that `hvmesh up` writes, else [nats] of the config file. Output: python-openstackclient's
`-f table|json|yaml|value|csv` and `-c COLUMN`. Errors: one line; `--debug` for the details.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from hvmesh.core import (
    cli_args,
    cli_completion,
    cli_plugins,
    config,
    contexts,
    errors,
    lazy,
    log,
    output,
)
from hvmesh.plugins.drivers import DriverUnavailable

# Imported when first used: parsing the command line (and --help) needs none of them.
bus = lazy.module("hvmesh.core.bus")
image_upload = lazy.module("hvmesh.core.image_upload")
launcher = lazy.module("hvmesh.core.launcher")
natsserver = lazy.module("hvmesh.core.natsserver")

FLAVOR_COLUMNS = ["id", "name", "vcpus", "ram_mb", "disk_gb", "is_public"]
IMAGE_COLUMNS = ["id", "name", "disk_format", "status", "size", "visibility"]


class CliError(Exception):
    """A usage problem the CLI reports in one line."""


def parse_properties(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


# --- connecting -----------------------------------------------------------------------------


def nats_settings(args: argparse.Namespace) -> config.NatsSection:
    cfg = config.load(args.config).nats
    if args.url:
        return msgspec.structs.replace(
            cfg, url=args.url, user=args.user or "", password=args.password or ""
        )
    return contexts.settings(args.context or os.environ.get("HVMESH_CONTEXT"), cfg)


async def connect_cli(args: argparse.Namespace) -> Any:
    """Connect once, giving up after --timeout instead of retrying forever."""
    settings = nats_settings(args)
    try:
        return await asyncio.wait_for(
            bus.connect(settings, "hvmesh-cli", once=True, connect_timeout=args.timeout),
            timeout=args.timeout,
        )
    except TimeoutError:
        raise CliError(
            f"cannot connect to NATS at {settings.url}: no answer within {args.timeout:g}s"
        ) from None
    except Exception as exc:
        detail = str(exc) or type(exc).__name__
        raise CliError(f"cannot connect to NATS at {settings.url}: {detail}") from None


async def api(args: argparse.Namespace, subject: str, body: dict[str, Any]) -> Any:
    nc = await connect_cli(args)
    try:
        return await bus.call(nc, subject, body, timeout=args.timeout)
    finally:
        await nc.close()


def call(args: argparse.Namespace, resource: str, verb: str, body: dict[str, Any]) -> Any:
    return launcher.run(api(args, f"hvmesh.api.{resource}.{verb}", body))


def ref(value: str) -> dict[str, str]:
    """A record reference: the API accepts an id or a name in the same field."""
    return {"id": value}


async def delete_all(
    args: argparse.Namespace,
    subject: str,
    refs: list[str],
    body: Callable[[str], dict[str, Any]] = ref,
) -> tuple[list[Any], int]:
    """Send one delete per reference, in order: the replies, and how many failed.

    With one reference its error is raised. With several, each failure is one line on
    stderr (`error (CODE): message`) and the others are still deleted.
    """
    nc = await connect_cli(args)
    replies: list[Any] = []
    try:
        for r in refs:
            try:
                replies.append(await bus.call(nc, subject, body(r), timeout=args.timeout))
            except errors.HvmeshError as exc:
                if len(refs) == 1:
                    raise
                print(f"error ({exc.code}): {exc.message}", file=sys.stderr, flush=True)
    finally:
        await nc.close()
    return replies, len(refs) - len(replies)


def delete_each(
    args: argparse.Namespace,
    resource: str,
    refs: list[str],
    noun: str,
    body: Callable[[str], dict[str, Any]] = ref,
) -> None:
    """`hvmesh X delete A [B ...]`: delete each, show what went, fail if any did not."""
    subject = f"hvmesh.api.{resource}.delete"
    replies, failed = launcher.run(delete_all(args, subject, refs, body))
    if len(refs) == 1:
        output.emit(replies[0], args.format)
    elif replies or args.format == "json":
        output.emit(replies, args.format, ["deleted"])
    if failed:
        raise CliError(f"Failed to delete {failed} of {len(refs)} {noun}")


# --- services -------------------------------------------------------------------------------


def service_config(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config)
    if getattr(args, "strict_plugins", False):
        cfg = msgspec.structs.replace(
            cfg, plugins=msgspec.structs.replace(cfg.plugins, strict=True)
        )
    if args.url or args.context:
        cfg = msgspec.structs.replace(cfg, nats=nats_settings(args))
    log.setup("debug" if args.debug else cfg.DEFAULT.log_level)
    return cfg


def run_service(args: argparse.Namespace, build: Callable[[Any, config.Config], list[Any]]) -> None:
    cfg = service_config(args)
    if cfg.plugins.strict:  # a plugin that fails stops the service before it connects
        launcher.load_plugins(cfg)

    async def main() -> None:
        nc = await bus.connect(cfg.nats, f"hvmesh-{args.command}")
        try:
            await launcher.serve(build(nc, cfg))
        finally:
            await nc.drain()

    launcher.run(main())


def cmd_api(args: argparse.Namespace) -> None:
    from hvmesh.core.api import ApiService

    run_service(args, lambda nc, cfg: [ApiService(nc, cfg)])


def cmd_conductor(args: argparse.Namespace) -> None:
    from hvmesh.core.conductor import Conductor

    run_service(args, lambda nc, cfg: [Conductor(nc, cfg)])


def cmd_scheduler(args: argparse.Namespace) -> None:
    from hvmesh.schedulers.service import SchedulerService

    run_service(args, lambda nc, cfg: [SchedulerService(nc, cfg)])


def cmd_metadata(args: argparse.Namespace) -> None:
    from hvmesh.core.metadata_service import MetadataService

    def build(nc: Any, cfg: config.Config) -> list[Any]:
        if args.metadata_listen is not None:
            cfg = msgspec.structs.replace(
                cfg, metadata=msgspec.structs.replace(cfg.metadata, listen=args.metadata_listen)
            )
        return [MetadataService(nc, cfg)]

    run_service(args, build)


def cmd_agent(args: argparse.Namespace) -> None:
    if args.count > 1 and args.driver != "fake":
        raise CliError("--count is for the fake driver only")
    # The driver is loaded before connecting: a missing hypervisor library is one line now.
    registry = launcher.load_plugins(service_config(args))
    registry.driver(args.driver)

    def build(nc: Any, cfg: config.Config) -> list[Any]:
        if args.count > 1:
            return launcher.fake_fleet(
                nc, cfg, args.count, prefix=args.host or "fake", registry=registry
            )
        return [launcher.make_agent(nc, cfg, args.driver, args.host or cfg.host_name(), registry)]

    run_service(args, build)


def cmd_up(args: argparse.Namespace) -> None:
    from hvmesh.core.up import up

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
    launcher.run(
        up(
            cfg,
            data_dir=Path(args.data_dir).expanduser(),
            nats_port=args.nats_port,
            leaf_port=args.leaf_port,
            fake_hosts=args.fake_hosts,
            listen=args.listen,
            metadata_listen=args.metadata_listen,
        )
    )


def cmd_config_sample(args: argparse.Namespace) -> None:
    print(config.sample())


# --- resources ------------------------------------------------------------------------------


def cmd_flavor_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "vcpus": args.vcpus,
        "ram_mb": args.ram,
        "disk_gb": args.disk,
        "extra_specs": parse_properties(args.property, "--property"),
        "is_public": not args.private,
    }
    if args.id:
        body["id"] = args.id
    output.emit(call(args, "flavors", "create", body)["flavor"], args.format)


def cmd_flavor_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "flavors", "list", {})["flavors"], args.format, FLAVOR_COLUMNS)


def cmd_flavor_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "flavors", "get", ref(args.flavor))["flavor"], args.format)


def cmd_flavor_delete(args: argparse.Namespace) -> None:
    delete_each(args, "flavors", args.flavor, "flavors")


def cmd_image_create(args: argparse.Namespace) -> None:
    path = Path(args.file).expanduser() if args.file else None
    if path is not None and not path.is_file():
        raise CliError(f"--file {args.file}: no such file")
    body = {
        "name": args.name,
        "disk_format": args.disk_format,
        "container_format": args.container_format,
        "properties": parse_properties(args.property, "--property"),
        "min_ram_mb": args.min_ram,
        "min_disk_gb": args.min_disk,
        "visibility": "private" if args.private else "public",
        "upload": path is not None,
    }

    async def create() -> Any:
        nc = await connect_cli(args)
        try:
            image = (await bus.call(nc, "hvmesh.api.images.create", body, timeout=args.timeout))[
                "image"
            ]
            if path is None:
                return image
            bar = image_upload.ProgressBar(f"uploading {path.name}")
            return await image_upload.upload(nc, image["id"], path, args.timeout, bar)
        finally:
            await nc.close()

    output.emit(launcher.run(create()), args.format)


def cmd_image_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "images", "list", {})["images"], args.format, IMAGE_COLUMNS)


def cmd_image_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "images", "get", ref(args.image))["image"], args.format)


def cmd_image_delete(args: argparse.Namespace) -> None:
    delete_each(args, "images", args.image, "images")


AGGREGATE_COLUMNS = ["id", "name", "metadata", "hosts"]


def cmd_aggregate_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "metadata": parse_properties(args.property, "--property"),
    }
    if args.zone:
        body["availability_zone"] = args.zone
    output.emit(call(args, "aggregates", "create", body)["aggregate"], args.format)


def cmd_aggregate_list(args: argparse.Namespace) -> None:
    output.emit(call(args, "aggregates", "list", {})["aggregates"], args.format, AGGREGATE_COLUMNS)


def cmd_aggregate_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "aggregates", "get", ref(args.aggregate))["aggregate"], args.format)


def cmd_aggregate_delete(args: argparse.Namespace) -> None:
    delete_each(args, "aggregates", args.aggregate, "aggregates")


def cmd_aggregate_add_host(args: argparse.Namespace) -> None:
    body = {"id": args.aggregate, "host": args.host}
    output.emit(call(args, "aggregates", "add_host", body)["aggregate"], args.format)


def cmd_aggregate_remove_host(args: argparse.Namespace) -> None:
    body = {"id": args.aggregate, "host": args.host}
    output.emit(call(args, "aggregates", "remove_host", body)["aggregate"], args.format)


def cmd_aggregate_set(args: argparse.Namespace) -> None:
    metadata: dict[str, Any] = dict(parse_properties(args.property, "--property"))
    metadata.update({key: None for key in args.unset or []})
    if not metadata:
        raise CliError("give --property KEY=VALUE or --unset KEY")
    body = {"id": args.aggregate, "metadata": metadata}
    output.emit(call(args, "aggregates", "set_metadata", body)["aggregate"], args.format)


def cmd_bench_scheduler(args: argparse.Namespace) -> None:
    from hvmesh.core import bench

    for flag in ("hosts", "requests", "schedulers", "concurrency"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag} must be at least 1")
    result = launcher.run(
        bench.run(
            hosts=args.hosts,
            requests=args.requests,
            schedulers=args.schedulers,
            concurrency=args.concurrency,
            url=args.url,
            user=args.user or "",
            password=args.password or "",
            quiet=not output.for_people(args.format),
        )
    )
    data = msgspec.to_builtins(result)
    if output.for_people(args.format):
        data.pop("audit_problems")
    output.emit(data, args.format)
    if result.audit != "clean":
        raise CliError(f"audit failed: {'; '.join(result.audit_problems[:3])}")


def _emit_result(result: dict[str, Any], fmt: str) -> None:
    if not output.for_people(fmt):
        output.emit(result, fmt)
        return
    columns = result["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in result["rows"]]
    output.emit(rows, fmt, [(c, c) for c in columns])  # headed as the SQL names them
    if result.get("truncated"):
        print(f"(first {len(result['rows'])} rows only)", file=sys.stderr)


def cmd_inventory_query(args: argparse.Namespace) -> None:
    body = {"sql": args.sql, "params": args.param or []}
    _emit_result(call(args, "inventory", "query", body)["query"], args.format)


def cmd_inventory_report(args: argparse.Namespace) -> None:
    _emit_result(call(args, "inventory", "report", {"name": args.name})["report"], args.format)


def cmd_manage_audit(args: argparse.Namespace) -> None:
    from hvmesh.core import audit
    from hvmesh.core.store import Store

    async def run() -> list[Any]:
        nc = await connect_cli(args)
        try:
            try:
                store = await Store(nc.jetstream()).open(create=False)
            except Exception as exc:
                raise CliError(
                    "manage audit reads hvmesh's buckets directly: connect as an operator of "
                    f"the HVMESH account ({type(exc).__name__})"
                ) from None
            return await audit.audit(store, heal=args.heal)
        finally:
            await nc.close()

    found = launcher.run(run())
    rows = [msgspec.to_builtins(f) for f in found]
    if rows or not output.for_people(args.format):
        output.emit(rows, args.format, ["kind", "host", "server_id", "message", "healed"])
    else:
        print("audit: clean")
    unhealed = [f for f in found if not f.healed]
    if unhealed:
        raise CliError(
            f"{len(unhealed)} finding(s) left"
            + ("" if args.heal else "; --heal fixes all but overcommit")
        )


def cmd_req(args: argparse.Namespace) -> None:
    try:
        body = json.loads(args.body) if args.body else {}
    except ValueError as exc:
        raise CliError(f"body is not JSON: {exc}") from None
    output.emit(launcher.run(api(args, args.subject, body)), "json")


# --- parser ---------------------------------------------------------------------------------


def add_common_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Connection and output options, accepted before and after the command words.

    The copy on each command defaults to SUPPRESS so it only overrides what was given
    before the command when it is given itself.
    """

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = p.add_argument_group("connection and output")
    g.add_argument("--config", default=d(None), help="INI config file (default: $HVMESH_CONFIG)")
    g.add_argument(
        "--context",
        default=d(None),
        help="NATS CLI context to connect with (default: hvmesh-admin)",
    )
    g.add_argument("--url", default=d(None), help="NATS URL, overriding the context")
    g.add_argument("--user", default=d(None), help="NATS user (with --url)")
    g.add_argument("--password", default=d(None), help="NATS password (with --url)")
    g.add_argument("--timeout", type=float, default=d(10.0), help="seconds to wait for a reply")
    cli_args.add_output_options(g, d)
    g.add_argument("--debug", action="store_true", default=d(False), help="show error details")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, suppress=True)
    parser = argparse.ArgumentParser(
        prog="hvmesh", description="hvmesh: a compute control plane on NATS."
    )
    add_common_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(parent: Any, name: str, func: Callable[[argparse.Namespace], None], help: str) -> Any:
        p = parent.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func, command_parser=p)
        return p

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

    services = [
        leaf(sub, "api", cmd_api, "run the API service"),
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

    fl = sub.add_parser("flavor", help="flavors").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(fl, "create", cmd_flavor_create, "create a flavor (admin)")
    p.add_argument("name")
    p.add_argument("--vcpus", type=int, required=True)
    p.add_argument("--ram", type=int, required=True, help="MB")
    p.add_argument("--disk", type=int, default=0, help="GB")
    p.add_argument("--id", help="flavor id (default: a new UUID)")
    p.add_argument("--property", action="append", metavar="KEY=VALUE", help="extra spec")
    p.add_argument("--private", action="store_true")
    leaf(fl, "list", cmd_flavor_list, "list flavors")
    leaf(fl, "show", cmd_flavor_show, "show a flavor").add_argument("flavor", help="id or name")
    leaf(fl, "delete", cmd_flavor_delete, "delete flavors (admin)").add_argument(
        "flavor", nargs="+", help="id or name (several may be given)"
    )

    im = sub.add_parser("image", help="images").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(im, "create", cmd_image_create, "create an image, uploading its file")
    p.add_argument("name")
    p.add_argument("--file", help="the image's data (uploaded, sha256-checked)")
    p.add_argument(
        "--disk-format",
        default="qcow2",
        choices=["qcow2", "raw", "vmdk", "vhd", "vhdx", "iso", "ami", "ari", "aki"],
    )
    p.add_argument(
        "--container-format", default="bare", choices=["bare", "ovf", "ova", "aki", "ari", "ami"]
    )
    p.add_argument("--property", action="append", metavar="KEY=VALUE")
    p.add_argument("--min-ram", type=int, default=0, help="MB")
    p.add_argument("--min-disk", type=int, default=0, help="GB")
    p.add_argument("--private", action="store_true")
    leaf(im, "list", cmd_image_list, "list images")
    leaf(im, "show", cmd_image_show, "show an image").add_argument("image", help="id or name")
    leaf(im, "delete", cmd_image_delete, "delete images").add_argument(
        "image", nargs="+", help="id or name (several may be given)"
    )

    from hvmesh.core import cli_network  # it uses this module's helpers

    cli_network.add_parsers(sub, leaf)
    cli_plugins.add_parsers(sub, leaf)
    cli_completion.add_parser(sub, leaf)

    from hvmesh.core import cli_compute, cli_server_actions, cli_servers

    sv = sub.add_parser("server", help="servers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    cli_servers.add_parsers(sv, leaf)
    cli_server_actions.add_parsers(sub, sv, leaf)
    cli_compute.add_group_parsers(sv, "group", leaf)
    cli_compute.add_parsers(sub, leaf)  # hypervisor, availability zone, compute service, ...

    ag = sub.add_parser("aggregate", help="host aggregates (admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(ag, "create", cmd_aggregate_create, "create a host aggregate")
    p.add_argument("name")
    p.add_argument("--zone", help="make it an availability zone")
    p.add_argument("--property", action="append", metavar="KEY=VALUE", help="metadata")
    leaf(ag, "list", cmd_aggregate_list, "list aggregates")
    leaf(ag, "show", cmd_aggregate_show, "show an aggregate").add_argument(
        "aggregate", help="id or name"
    )
    leaf(ag, "delete", cmd_aggregate_delete, "delete empty aggregates").add_argument(
        "aggregate", nargs="+", help="id or name (several may be given)"
    )
    for name, func, what in (
        ("add-host", cmd_aggregate_add_host, "add a host"),
        ("remove-host", cmd_aggregate_remove_host, "remove a host"),
    ):
        p = leaf(ag, name, func, what)
        p.add_argument("aggregate", help="id or name")
        p.add_argument("host")
    p = leaf(ag, "set", cmd_aggregate_set, "set or unset metadata")
    p.add_argument("aggregate", help="id or name")
    p.add_argument("--property", action="append", metavar="KEY=VALUE")
    p.add_argument("--unset", action="append", metavar="KEY")

    inv = sub.add_parser("inventory", help="SQL over the inventory index (admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(inv, "query", cmd_inventory_query, "read-only SQL over hosts, allocations, servers")
    p.add_argument("sql", help="one SELECT statement; ? marks take --param values")
    p.add_argument("--param", action="append", help="a value for the next ? mark")
    p = leaf(inv, "report", cmd_inventory_report, "a ready-made report")
    p.add_argument("name", choices=["capacity", "consumers"])

    manage = sub.add_parser("manage", help="operator maintenance").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(
        manage,
        "audit",
        cmd_manage_audit,
        "compare host allocations with servers: overcommit, leaked, missing, mismatched, double",
    )
    p.add_argument("--heal", action="store_true", help="fix what can be fixed")

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(
        bench,
        "scheduler",
        cmd_bench_scheduler,
        "placement decisions/s and latency through real scheduler processes, claims included",
    )
    p.add_argument("--hosts", type=int, default=10000, help="simulated hosts")
    p.add_argument("--requests", type=int, default=5000, help="placements to make")
    p.add_argument("--schedulers", type=int, default=1, help="scheduler processes")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")

    p = leaf(sub, "req", cmd_req, "send a raw JSON request, as `nats req` does")
    p.add_argument("subject", help="e.g. hvmesh.api.servers.list")
    p.add_argument("body", nargs="?", default="{}", help="JSON body")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = cli_args.parse(build_parser(), argv)
    log.setup("debug" if args.debug else "error")
    output.configure(args)
    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return output.stdout_closed()
    except KeyboardInterrupt:
        return 130
    except (
        CliError,
        errors.HvmeshError,
        config.ConfigError,
        natsserver.NatsServerError,
        DriverUnavailable,
        ValueError,
        OSError,
    ) as exc:
        if args.debug:
            traceback.print_exc()
        message = getattr(exc, "message", None) or str(exc)
        code = getattr(exc, "code", None)
        prefix = f"error ({code})" if isinstance(exc, errors.HvmeshError) else "error"
        print(f"{prefix}: {message}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"error: {type(exc).__name__}: {exc} (--debug for details)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
