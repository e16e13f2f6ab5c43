"""The `hvmesh` command: run the services, and talk to a running deployment.

Connection: --url/--user/--password, else --context NAME (a NATS CLI context), else the
"hvmesh-admin" context that `hvmesh up` writes, else [nats] of the config file. Output:
tables for people, `-f json` for scripts. Errors: one line; `--debug` for the details.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from hvmesh.core import (
    bus,
    config,
    contexts,
    errors,
    image_upload,
    launcher,
    log,
    natsserver,
    output,
)

SERVER_COLUMNS = ["id", "name", "status", "task_state", "power_state", "flavor", "image", "host"]
FLAVOR_COLUMNS = ["id", "name", "vcpus", "ram_mb", "disk_gb", "is_public"]
IMAGE_COLUMNS = ["id", "name", "disk_format", "status", "size", "visibility"]
HYPERVISOR_COLUMNS = [
    "name",
    "state",
    "status",
    "availability_zone",
    "vcpus_used",
    "vcpus",
    "memory_mb_used",
    "memory_mb",
    "local_gb_used",
    "local_gb",
    "running_vms",
]


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
    name = args.context or os.environ.get("HVMESH_CONTEXT")
    ctx = contexts.read(name or "hvmesh-admin")
    if name and ctx is None:
        raise CliError(f"no NATS context named {name!r} in {contexts.context_dir()}")
    if ctx is not None:
        return msgspec.structs.replace(
            cfg, url=ctx.url, user=ctx.user, password=ctx.password, creds=ctx.creds
        )
    return cfg


async def connect_cli(args: argparse.Namespace) -> Any:
    """Connect once, giving up after --timeout instead of retrying forever."""
    settings = nats_settings(args)
    try:
        return await asyncio.wait_for(
            bus.connect(settings, "hvmesh-cli", allow_reconnect=False, max_reconnect_attempts=0),
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


# --- services -------------------------------------------------------------------------------


def service_config(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config)
    if args.url or args.context:
        cfg = msgspec.structs.replace(cfg, nats=nats_settings(args))
    log.setup("debug" if args.debug else cfg.DEFAULT.log_level)
    return cfg


def run_service(args: argparse.Namespace, build: Callable[[Any, config.Config], list[Any]]) -> None:
    cfg = service_config(args)

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

    run_service(args, lambda nc, cfg: [MetadataService(nc, cfg)])


def cmd_agent(args: argparse.Namespace) -> None:
    def build(nc: Any, cfg: config.Config) -> list[Any]:
        if args.count > 1:
            if args.driver != "fake":
                raise CliError("--count is for the fake driver only")
            return launcher.fake_fleet(nc, cfg, args.count, prefix=args.host or "fake")
        return [launcher.make_agent(nc, cfg, args.driver, args.host or cfg.host_name())]

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
    output.emit(call(args, "flavors", "delete", ref(args.flavor)), args.format)


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
    output.emit(call(args, "images", "delete", ref(args.image)), args.format)


def server_row(s: dict[str, Any]) -> dict[str, Any]:
    return {
        **s,
        "flavor": s["flavor"]["name"],
        "image": s["image"]["name"],
        "power_state": _power_name(s.get("power_state")),
    }


def _power_name(value: Any) -> str:
    from hvmesh.core.states import POWER_STATE_NAMES

    return POWER_STATE_NAMES.get(value, str(value))


async def wait_for_server(
    args: argparse.Namespace,
    server_id: str,
    done: Callable[[dict[str, Any] | None], bool],
    label: str = "",
) -> dict[str, Any] | None:
    """Poll the server until `done(server)`, showing each state change on stderr."""
    nc = await connect_cli(args)
    started = time.monotonic()
    last = None
    try:
        while True:
            try:
                reply = await bus.call(nc, "hvmesh.api.servers.get", {"id": server_id})
                server = reply["server"]
            except errors.NotFound:
                server = None
            state = (
                "deleted"
                if server is None
                else f"{server['status']} {server.get('task_state') or ''}".strip()
            )
            if state != last:
                print(
                    f"  {time.monotonic() - started:6.1f}s  {label}{state}",
                    file=sys.stderr,
                    flush=True,
                )
                last = state
            if done(server):
                return server
            if time.monotonic() - started > args.wait_timeout:
                raise CliError(f"server {server_id} is still {state} after {args.wait_timeout:g}s")
            await asyncio.sleep(0.25)  # polling interval between status reads
    finally:
        await nc.close()


def cmd_server_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {
        "name": args.name,
        "flavor": args.flavor,
        "image": args.image,
        "metadata": parse_properties(args.property, "--property"),
    }
    if args.availability_zone:
        body["availability_zone"] = args.availability_zone
    hints: dict[str, Any] = {}
    for key, value in parse_properties(args.hint, "--hint").items():
        if key not in ("same_host", "different_host"):
            raise CliError(f"--hint {key}: expected same_host=ID or different_host=ID")
        hints.setdefault(key, []).append(value)
    if args.group:
        hints["group"] = args.group
    if hints:
        body["scheduler_hints"] = hints
    body.update(interface_options(args))
    if args.min is not None:
        body["min_count"] = args.min
    if args.max is not None:
        body["max_count"] = args.max
    reply = call(args, "servers", "create", body)
    if "servers" in reply:
        create_many(args, reply["servers"])
        return
    server = reply["server"]
    if args.wait:
        server = launcher.run(
            wait_for_server(
                args, server["id"], lambda s: s is not None and s["status"] in ("ACTIVE", "ERROR")
            )
        )
        assert server is not None
    output.emit(server_row(server) if args.format == "table" else server, args.format)
    if args.wait and server["status"] == "ERROR":
        fault = server.get("fault") or {}
        raise CliError(f"server {server['id']} went to ERROR: {fault.get('message', 'no fault')}")


def interface_options(args: argparse.Namespace) -> dict[str, Any]:
    """--network, --port, --key-name, --user-data and --config-drive of server create."""
    body: dict[str, Any] = {}
    if args.network:
        body["networks"] = args.network
    if args.port:
        body["ports"] = args.port
    if args.key_name:
        body["key_name"] = args.key_name
    if args.user_data:
        try:
            raw = Path(args.user_data).expanduser().read_bytes()
        except OSError as exc:
            raise CliError(f"--user-data {args.user_data}: {exc.strerror}") from None
        body["user_data"] = base64.b64encode(raw).decode()
    if args.config_drive:
        body["config_drive"] = True
    return body


def create_many(args: argparse.Namespace, servers: list[dict[str, Any]]) -> None:
    """A multi-create's servers; with --wait, each until it is ACTIVE, ERROR or not created."""
    if args.wait:

        async def settle() -> list[dict[str, Any] | None]:
            return [
                await wait_for_server(
                    args,
                    s["id"],
                    lambda s: s is None or s["status"] in ("ACTIVE", "ERROR"),
                    label=f"{s['name']}: ",
                )
                for s in servers
            ]

        settled = launcher.run(settle())
        servers = [s for s in settled if s is not None]
    rows = [server_row(s) for s in servers] if args.format == "table" else servers
    output.emit(rows, args.format, SERVER_COLUMNS)
    failed = [s for s in servers if s["status"] == "ERROR"]
    if args.wait and failed:
        fault = failed[0].get("fault") or {}
        raise CliError(
            f"{len(failed)} of {len(servers)} servers went to ERROR: "
            f"{fault.get('message', 'no fault')}"
        )


def cmd_server_list(args: argparse.Namespace) -> None:
    servers = call(args, "servers", "list", {})["servers"]
    if args.format == "table":
        servers = [server_row(s) for s in servers]
    output.emit(servers, args.format, SERVER_COLUMNS)


def cmd_server_show(args: argparse.Namespace) -> None:
    server = call(args, "servers", "get", {"id": args.server})["server"]
    output.emit(server_row(server) if args.format == "table" else server, args.format)


def cmd_server_delete(args: argparse.Namespace) -> None:
    server = call(args, "servers", "delete", {"id": args.server})["server"]
    if args.wait:
        launcher.run(
            wait_for_server(args, server["id"], lambda s: s is None or s["status"] == "ERROR")
        )
    output.emit({"deleted": server["id"]} if args.wait else {"deleting": server["id"]}, args.format)


# --- server actions (hvmesh.api.servers.action) ------------------------------------------


class ServerAction(msgspec.Struct, frozen=True):
    """One `hvmesh server <command>`: the action it sends and how its body is built."""

    action: str
    help: str
    body: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    # (flags, argparse keyword arguments) of the command's own options.
    options: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()
    waits: bool = True  # runs on the conductor: --wait follows it until it is done


def _host(args: argparse.Namespace) -> dict[str, Any]:
    return {"host": args.host} if args.host else {}


_HOST = (("--host",), {"help": "target host (admin; default: the scheduler chooses)"})

SERVER_ACTIONS: dict[str, ServerAction] = {
    "reboot": ServerAction(
        "reboot",
        "reboot a server (soft: the guest restarts; --hard: power cycle)",
        lambda args: {"type": "HARD" if args.hard else "SOFT"},
        ((("--hard",), {"action": "store_true", "help": "power cycle it"}),),
    ),
    "stop": ServerAction("stop", "power a server off (SHUTOFF)"),
    "start": ServerAction("start", "power a stopped server on"),
    "pause": ServerAction("pause", "pause a server in memory"),
    "unpause": ServerAction("unpause", "unpause a paused server"),
    "suspend": ServerAction("suspend", "suspend a server to disk"),
    "resume": ServerAction("resume", "resume a suspended server"),
    "rebuild": ServerAction(
        "rebuild",
        "recreate a server from an image, keeping its id, host and claims",
        lambda args: {"image": args.image},
        ((("--image",), {"required": True, "help": "id or name"}),),
    ),
    "resize": ServerAction(
        "resize",
        "move a server to another flavor (then resize-confirm or resize-revert)",
        lambda args: {"flavor": args.flavor},
        ((("--flavor",), {"required": True, "help": "id or name"}),),
    ),
    "resize-confirm": ServerAction("confirm-resize", "confirm a resize or migration"),
    "resize-revert": ServerAction("revert-resize", "revert a resize or migration"),
    "migrate": ServerAction(
        "migrate",
        "move a server to another host (admin): cold, or --live",
        lambda args: {"action": "live-migrate" if args.live else "migrate", **_host(args)},
        (_HOST, (("--live",), {"action": "store_true", "help": "live migration"})),
    ),
    "shelve": ServerAction("shelve", "shelve a server (power off, keep an image)"),
    "shelve-offload": ServerAction("shelve-offload", "free a shelved server's host"),
    "unshelve": ServerAction("unshelve", "bring a shelved server back"),
    "evacuate": ServerAction(
        "evacuate",
        "rebuild a server of a down host on another host (admin)",
        _host,
        (_HOST,),
    ),
    "lock": ServerAction(
        "lock",
        "lock a server against actions by others",
        lambda args: {"reason": args.reason} if args.reason else {},
        ((("--reason",), {"help": "why (shown to others)"}),),
        waits=False,
    ),
    "unlock": ServerAction("unlock", "unlock a server", waits=False),
    "console-log": ServerAction(
        "console-log",
        "print a server's console output",
        lambda args: {"length": args.lines} if args.lines is not None else {},
        ((("--lines",), {"type": int, "metavar": "N", "help": "the last N lines only"}),),
        waits=False,
    ),
    "attach-interface": ServerAction(
        "attach-interface",
        "plug a new interface into a server: a port on --network, or --port",
        lambda args: {
            k: v
            for k, v in (
                ("network", args.network),
                ("port", args.port),
                ("fixed_ip", args.fixed_ip),
            )
            if v
        },
        (
            (("--network",), {"help": "network id or name: a new port on it"}),
            (("--port",), {"help": "an existing free port"}),
            (("--fixed-ip",), {"help": "with --network: the address to take"}),
        ),
    ),
    "detach-interface": ServerAction(
        "detach-interface",
        "unplug an interface (its port goes if hvmesh made it)",
        lambda args: {"port": args.port},
        ((("--port",), {"required": True, "help": "the interface's port id"}),),
    ),
    "reset-state": ServerAction(
        "reset-state",
        "set a stuck server's state to ERROR, or ACTIVE with --active (admin)",
        lambda args: {"state": "active" if args.active else "error"},
        ((("--active",), {"action": "store_true", "help": "reset to ACTIVE"}),),
        waits=False,
    ),
}


def action_body(args: argparse.Namespace) -> dict[str, Any]:
    """The servers.action body of `hvmesh server <command> ...`."""
    spec = SERVER_ACTIONS[args.action]
    return {"id": args.server, "action": spec.action, **spec.body(args)}


def cmd_server_action(args: argparse.Namespace) -> None:
    spec = SERVER_ACTIONS[args.action]
    reply = launcher.run(api(args, "hvmesh.api.servers.action", action_body(args)))
    if "output" in reply:  # console-log
        sys.stdout.write(reply["output"] if args.format == "table" else json.dumps(reply) + "\n")
        return
    server, request_id = reply["server"], reply["request_id"]
    if spec.waits and getattr(args, "wait", False):
        followed = launcher.run(
            wait_for_server(args, server["id"], lambda s: s is None or s["task_state"] is None)
        )
        if followed is None:
            raise CliError(f"server {server['id']} was deleted during {args.action}")
        server = followed
    server = {**server, "request_id": request_id}
    output.emit(server_row(server) if args.format == "table" else server, args.format)
    if spec.waits and getattr(args, "wait", False):
        fault = server.get("fault")
        if server["status"] == "ERROR" or fault:
            message = (fault or {}).get("message", "no fault")
            raise CliError(f"{args.action} of server {server['id']} failed: {message}")


EVENT_COLUMNS = ["request_id", "action", "start_time", "message", "user"]
STEP_COLUMNS = ["event", "result", "start_time", "finish_time", "host", "details"]


def _when(value: Any) -> Any:
    if not isinstance(value, int | float):
        return value
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _times(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _when(v) if k.endswith("_time") else v for k, v in row.items()}


def cmd_server_event_list(args: argparse.Namespace) -> None:
    found = call(args, "servers", "events.list", {"id": args.server})["instance_actions"]
    if args.format == "table":
        found = [_times(a) for a in found]
    output.emit(found, args.format, EVENT_COLUMNS)


def cmd_server_event_show(args: argparse.Namespace) -> None:
    body = {"id": args.server, "request_id": args.request_id}
    action = call(args, "servers", "events.get", body)["instance_action"]
    if args.format == "json":
        output.emit(action, args.format)
        return
    steps = [_times(e) for e in action.pop("events")]
    output.emit(_times(action), args.format)
    print()
    output.emit(steps, args.format, STEP_COLUMNS)


GROUP_COLUMNS = ["id", "name", "policy", "max_server_per_host", "members"]


def cmd_group_create(args: argparse.Namespace) -> None:
    body = {"name": args.name, "policy": args.policy, "max_server_per_host": args.max_per_host}
    output.emit(call(args, "server_groups", "create", body)["server_group"], args.format)


def cmd_group_list(args: argparse.Namespace) -> None:
    groups = call(args, "server_groups", "list", {})["server_groups"]
    output.emit(groups, args.format, GROUP_COLUMNS)


def cmd_group_show(args: argparse.Namespace) -> None:
    output.emit(call(args, "server_groups", "get", {"id": args.group})["server_group"], args.format)


def cmd_group_delete(args: argparse.Namespace) -> None:
    output.emit(call(args, "server_groups", "delete", {"id": args.group}), args.format)


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
    output.emit(call(args, "aggregates", "delete", ref(args.aggregate)), args.format)


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


def cmd_hypervisor_list(args: argparse.Namespace) -> None:
    output.emit(
        call(args, "hypervisors", "list", {})["hypervisors"], args.format, HYPERVISOR_COLUMNS
    )


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
            quiet=args.format == "json",
        )
    )
    data = msgspec.to_builtins(result)
    if args.format == "table":
        data.pop("audit_problems")
    output.emit(data, args.format)
    if result.audit != "clean":
        raise CliError(f"audit failed: {'; '.join(result.audit_problems[:3])}")


def _emit_result(result: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        output.emit(result, fmt)
        return
    columns = result["columns"]
    output.emit([dict(zip(columns, row, strict=True)) for row in result["rows"]], fmt, columns)
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
    if args.format == "json" or rows:
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
    g.add_argument("-f", "--format", choices=["table", "json"], default=d("table"))
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
        p.set_defaults(func=func)
        return p

    p = leaf(sub, "up", cmd_up, "run everything on this box: nats-server, services, fake hosts")
    p.add_argument("--data-dir", default="~/.local/share/hvmesh", help="state directory")
    p.add_argument("--nats-port", type=int, default=4222)
    p.add_argument("--leaf-port", type=int, default=7422)
    p.add_argument("--listen", default="127.0.0.1", help="address NATS clients connect to")
    p.add_argument("--fake-hosts", type=int, default=3, help="simulated hypervisor hosts")
    p.add_argument(
        "--metadata-port", type=int, help="metadata service port (default: [metadata] port)"
    )

    leaf(sub, "api", cmd_api, "run the API service")
    leaf(sub, "conductor", cmd_conductor, "run a conductor")
    leaf(sub, "scheduler", cmd_scheduler, "run a scheduler")
    leaf(sub, "metadata", cmd_metadata, "run the metadata service guests read (cloud-init)")
    p = leaf(sub, "agent", cmd_agent, "run a hypervisor agent")
    p.add_argument("--driver", default="fake", help="driver name (fake, ...)")
    p.add_argument("--host", help="host name (default: [compute] host or the machine's)")
    p.add_argument("--count", type=int, default=1, help="fake driver: run this many hosts")

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
    leaf(fl, "delete", cmd_flavor_delete, "delete a flavor (admin)").add_argument(
        "flavor", help="id or name"
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
    leaf(im, "delete", cmd_image_delete, "delete an image").add_argument("image", help="id or name")

    from hvmesh.core import cli_network  # it uses this module's helpers

    cli_network.add_parsers(sub, leaf)

    sv = sub.add_parser("server", help="servers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(sv, "create", cmd_server_create, "boot a server")
    p.add_argument("name")
    p.add_argument("--flavor", required=True, help="id or name")
    p.add_argument("--image", required=True, help="id or name")
    p.add_argument("--availability-zone")
    p.add_argument("--property", action="append", metavar="KEY=VALUE", help="metadata")
    p.add_argument("--group", help="server group id: join it and follow its policy")
    p.add_argument(
        "--hint", action="append", metavar="KEY=ID", help="same_host=ID or different_host=ID"
    )
    p.add_argument(
        "--network", action="append", metavar="NET", help="an interface on NET (repeatable)"
    )
    p.add_argument("--port", action="append", metavar="ID", help="an existing free port")
    p.add_argument("--key-name", help="keypair whose public key the guest gets")
    p.add_argument("--user-data", metavar="FILE", help="user data for cloud-init")
    p.add_argument("--config-drive", action="store_true", help="also give a config drive")
    p.add_argument("--min", type=int, metavar="N", help="multi-create: at least N servers")
    p.add_argument("--max", type=int, metavar="N", help="multi-create: at most N servers")
    p.add_argument("--wait", action="store_true", help="show progress until ACTIVE or ERROR")
    p.add_argument("--wait-timeout", type=float, default=300.0)
    leaf(sv, "list", cmd_server_list, "list servers")
    leaf(sv, "show", cmd_server_show, "show a server").add_argument("server", help="id")
    p = leaf(sv, "delete", cmd_server_delete, "delete a server")
    p.add_argument("server", help="id")
    p.add_argument("--wait", action="store_true", help="wait until it is gone")
    p.add_argument("--wait-timeout", type=float, default=300.0)
    for command, spec in SERVER_ACTIONS.items():
        p = leaf(sv, command, cmd_server_action, spec.help)
        p.add_argument("server", help="id")
        for flags, kwargs in spec.options:
            p.add_argument(*flags, **kwargs)
        if spec.waits:
            p.add_argument(
                "--wait", action="store_true", help="follow it until done; fail if it failed"
            )
            p.add_argument("--wait-timeout", type=float, default=300.0)
    ev = sv.add_parser("event", help="a server's action log").add_subparsers(
        dest="event_action", required=True, metavar="ACTION"
    )
    leaf(ev, "list", cmd_server_event_list, "a server's actions, newest first").add_argument(
        "server", help="id"
    )
    p = leaf(ev, "show", cmd_server_event_show, "one action and its steps")
    p.add_argument("server", help="id")
    p.add_argument("request_id")

    sg = sub.add_parser("server-group", help="server groups").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = leaf(sg, "create", cmd_group_create, "create a server group")
    p.add_argument("name")
    p.add_argument(
        "--policy",
        required=True,
        choices=["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"],
    )
    p.add_argument("--max-per-host", type=int, default=1, help="anti-affinity: members per host")
    leaf(sg, "list", cmd_group_list, "list server groups")
    leaf(sg, "show", cmd_group_show, "show a server group").add_argument("group", help="id")
    leaf(sg, "delete", cmd_group_delete, "delete a server group").add_argument("group", help="id")

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
    leaf(ag, "delete", cmd_aggregate_delete, "delete an empty aggregate").add_argument(
        "aggregate", help="id or name"
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

    hv = sub.add_parser("hypervisor", help="hypervisors").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(hv, "list", cmd_hypervisor_list, "list hypervisors (admin)")

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
    args = build_parser().parse_args(argv)
    log.setup("debug" if args.debug else "error")
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except (
        CliError,
        errors.HvmeshError,
        config.ConfigError,
        natsserver.NatsServerError,
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
