"""The chaos run's deployment: nats-server and every hvmesh service as its own OS process,
killed with SIGKILL and started again on demand, with short timeouts so faults end soon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats

from hvmesh.core import config
from hvmesh.core.ops import natscluster, natsserver
from hvmesh.core.protocol import subjects
from hvmesh.core.protocol.base import now
from hvmesh.core.state import liveness
from hvmesh.core.state.store import Store

HOSTS_PER_AGENT = 4  # simulated hosts per agent process: an agent kill takes several down
SERVICE_DOWN_TIME = 6.0


def chaos_settings(
    workdir: Path, url: str, password: str, fail_rate: float, replicas: int = 1
) -> config.Config:
    """Short timeouts everywhere, so every fault the run causes ends within its bounds."""
    raw: dict[str, dict[str, Any]] = {
        "DEFAULT": {
            "log_level": "info",
            "log_format": "json",
            "service_down_time": SERVICE_DOWN_TIME,
            "start_timeout": 120.0,
        },
        "nats": {
            "url": url,
            "user": "hvmesh",
            "password": password,
            "request_timeout": 5.0,
            "replicas": replicas,
        },
        "conductor": {
            "task_ack_wait": 5.0,
            "action_timeout": 20.0,
            "resize_confirm_window": 5.0,
            "max_deliveries": 8,
            "retry_delay": 0.5,
            "retry_delay_max": 5.0,
            "scheduler_deadline": 30.0,
            "host_check_interval": 2.0,
            "stuck_check_interval": 5.0,
        },
        "scheduler": {"host_subset_size": 3},
        "compute": {
            "heartbeat_interval": 1.0,
            "reserved_host_memory_mb": 0,
            "reconcile_interval": 10.0,
            "sync_power_state_interval": 30.0,
            "image_cache_dir": str(workdir / "images"),
        },
        "fake": {"spawn_delay": 0.3, "destroy_delay": 0.05, "fail_rate": fail_rate},
        "quota": {"instances": -1, "cores": -1, "ram": -1},  # the load is no tenant's
    }
    return msgspec.convert(raw, config.Config, strict=False)


@dataclass
class Proc:
    """One hvmesh service process, by role and index, and its log file."""

    role: str
    index: int
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    down: bool = False  # killed on purpose, not yet started again

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return " | ".join(line[:300] for line in text)


@dataclass
class Exit:
    """A process that ended without being killed: a finding of the run."""

    name: str
    code: int | None
    tail: str


@dataclass
class ChaosDeployment:
    """nats-server (JetStream, its store under `workdir`), or with `cluster` a core cluster of
    that many nodes, the API, conductors, schedulers and agent processes running `hosts`
    simulated hosts in all."""

    workdir: Path
    hosts: int
    fail_rate: float = 0.05
    conductors: int = 2
    schedulers: int = 2
    cluster: int = 0
    server: natsserver.NatsServer | natscluster.NatsCluster | None = None
    cfg: config.Config | None = None
    procs: list[Proc] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    nats_port: int = 0
    leaf_port: int = 0

    @property
    def nats_dir(self) -> Path:
        return self.workdir / "nats"

    def host_names(self) -> list[str]:
        names: list[str] = []
        for p in self.procs:
            if p.role == "agent":
                count = int(p.argv[p.argv.index("--count") + 1])
                prefix = p.argv[p.argv.index("--host") + 1]
                if count == 1:
                    names.append(prefix)
                else:
                    width = max(4, len(str(count)))
                    names += [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]
        return names

    def roles(self) -> dict[str, int]:
        """How many processes each role has (nats-server: one, or each node of a cluster)."""
        counts: dict[str, int] = {"nats": self.cluster or 1}
        for p in self.procs:
            counts[p.role] = counts.get(p.role, 0) + 1
        return counts

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats_port, self.leaf_port = natsserver.free_port(), natsserver.free_port()
        await self.start_nats()
        assert self.server is not None
        self.cfg = chaos_settings(
            self.workdir,
            self.server.address,
            self.server.passwords["service"],
            self.fail_rate,
            replicas=self.cluster or 1,
        )
        config.write(self.cfg, self.workdir / "chaos.ini")
        agents = max(1, math.ceil(self.hosts / HOSTS_PER_AGENT))
        plan: list[tuple[str, list[str]]] = [("api", ["api"])]
        plan += [("conductor", ["conductor"])] * self.conductors
        plan += [("scheduler", ["scheduler"])] * self.schedulers
        for i in range(agents):
            count = self.hosts // agents + (1 if i < self.hosts % agents else 0)
            plan.append(("agent", ["agent", "--count", str(count), "--host", f"chaos{i + 1}"]))
        seen: dict[str, int] = {}
        for role, argv in plan:
            index = seen.get(role, 0)
            seen[role] = index + 1
            proc = Proc(role, index, argv, self.workdir / "logs" / f"{role}-{index}.log")
            proc.log.parent.mkdir(parents=True, exist_ok=True)
            self.procs.append(proc)
            self.launch(proc)

    async def start_nats(self) -> None:
        if self.cluster:
            self.server = await natscluster.start(self.nats_dir, nodes=self.cluster)
            return
        self.server = await natsserver.start(
            self.nats_dir, port=self.nats_port, leaf_port=self.leaf_port, name="chaos"
        )

    def launch(self, proc: Proc) -> None:
        env = {
            **os.environ,
            "HVMESH_CONFIG": str(self.workdir / "chaos.ini"),
            "HVMESH_STATE_DIR": str(self.workdir / "state"),
        }
        exe = str(Path(sys.executable).parent / "hvmesh")
        with open(proc.log, "ab") as log_file:
            proc.process = subprocess.Popen(
                [exe, *proc.argv],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.starts += 1
        proc.down = False

    def find(self, role: str, index: int) -> Proc:
        for p in self.procs:
            if p.role == role and p.index == index:
                return p
        raise ValueError(f"no {role} process {index}")

    def kill(self, role: str, index: int) -> None:
        """SIGKILL one service process (or nats-server, role "nats": a cluster's node `index`)."""
        if role == "nats":
            if isinstance(self.server, natscluster.NatsCluster):
                self.server.kill(index)
            else:
                assert self.server is not None
                self.server.kill()
            return
        proc = self.find(role, index)
        proc.down = True
        if proc.process is not None and proc.process.poll() is None:
            proc.process.send_signal(signal.SIGKILL)
            proc.process.wait()

    async def restart(self, role: str, index: int) -> None:
        if role == "nats" and isinstance(self.server, natscluster.NatsCluster):
            await self.server.restart(index)
        elif role == "nats":
            await self.start_nats()
        else:
            self.launch(self.find(role, index))

    def check_exits(self) -> list[Exit]:
        """Processes that ended on their own since the last look; each is started again."""
        found: list[Exit] = []
        for p in self.procs:
            if p.down or p.process is None or p.process.poll() is None:
                continue
            found.append(Exit(p.name, p.process.returncode, p.tail()))
            self.launch(p)
        self.exits += found
        return found

    def nats_running(self) -> bool:
        """Whether nats-server runs (every node of a cluster)."""
        if isinstance(self.server, natscluster.NatsCluster):
            return len(self.server.running()) == len(self.server.nodes)
        return self.server is not None and self.server.process.poll() is None

    async def restore_nats(self) -> None:
        """Start again whatever of nats-server is down (each node of a cluster that is)."""
        if isinstance(self.server, natscluster.NatsCluster):
            for node in self.server.nodes:
                if not node.running():
                    await self.server.restart(node.index)
        elif not self.nats_running():
            await self.start_nats()

    def process_starts(self) -> int:
        """Starts beyond the first of each process, nats-server's not counted."""
        return sum(p.starts - 1 for p in self.procs)

    async def stop(self) -> None:
        for p in self.procs:
            if p.process is not None and p.process.poll() is None:
                p.process.terminate()
        for p in self.procs:
            if p.process is None:
                continue
            try:
                await asyncio.to_thread(p.process.wait, 10)
            except subprocess.TimeoutExpired:
                p.process.kill()
                p.process.wait()
        if self.server is not None:
            self.server.stop()

    async def connect(self, user: str) -> Any:
        """A client connection that rides out nats-server restarts (and moves to another node
        of a cluster when its own goes)."""
        assert self.server is not None
        return await nats.connect(
            servers=self.server.address.split(","),
            user="hvmesh" if user == "service" else user,
            password=self.server.passwords[user],
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=_quiet,
        )

    async def wait_ready(self, nc: Any, store: Store, timeout: float = 120.0) -> None:
        """Until the API and every scheduler answer and every host heartbeats."""
        wanted = set(self.host_names())
        async with asyncio.timeout(timeout):
            while True:
                self.check_exits()
                apis = await answering(nc, subjects.API_SERVICE)
                scheds = await answering(nc, subjects.SCHEDULER_SERVICE)
                fresh = await liveness.up_since(store, now() - SERVICE_DOWN_TIME)
                if apis >= 1 and scheds >= self.schedulers and wanted <= fresh:
                    return


async def answering(nc: Any, service: str, wait: float = 0.5) -> int:
    """How many instances of micro service `service` answer a PING within `wait` seconds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    seen: set[str] = set()
    try:
        await nc.publish(f"$SRV.PING.{service}", b"", reply=inbox)
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                msg = await sub.next_msg(timeout=wait)
                if msg.data:
                    seen.add(json.loads(msg.data)["id"])
    finally:
        await sub.unsubscribe()
    return len(seen)


async def _quiet(exc: Exception) -> None:
    """Connection errors while nats-server is killed are the point of the run."""
