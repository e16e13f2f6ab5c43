"""`hvmesh bench idle`: what N simulated hosts cost when nothing happens.

It runs `hvmesh up --fake-hosts N` on a temporary store (every service in one process,
nats-server beside it, NATS contexts in its own config directory), times the start up to
the banner (every host registered and heartbeating), then measures the CPU time the two
processes use over the next S seconds of idling, as a fraction of one core, and their
resident memory at the end. Linux only: it reads /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from hvmesh.core.ops.natsserver import free_port

BANNER_END = "Stop: Ctrl-C"  # the banner's last line: every host is up
TICKS = os.sysconf("SC_CLK_TCK")


class IdleResult(msgspec.Struct):
    hosts: int
    start_s: float
    seconds: float
    hvmesh_core: float
    nats_server_core: float
    total_core: float
    hvmesh_mb: int
    nats_server_mb: int
    total_mb: int


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def nats_server_of(pid: int) -> int:
    """The nats-server `hvmesh up` (process `pid`) started."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "nats-server":
                return int(child)
    raise RuntimeError("hvmesh up started no nats-server")


def wait_banner(proc: subprocess.Popen[str], timeout: float, quiet: bool) -> None:
    """Until `hvmesh up` prints its banner's last line; its output is echoed unless quiet."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        if not quiet:
            print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
        if BANNER_END in line:
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"hvmesh up was not up within {timeout:g}s (exit code {proc.poll()})")


def run(
    hosts: int, seconds: float, start_timeout: float = 900.0, quiet: bool = False
) -> IdleResult:
    with tempfile.TemporaryDirectory(prefix="hvmesh-bench-idle-") as tmp:
        ports: set[int] = set()
        for _ in range(3):
            ports.add(free_port(ports))
        nats_port, leaf_port, metadata_port = sorted(ports)
        env = dict(os.environ, XDG_CONFIG_HOME=str(Path(tmp) / "config"))
        env["HVMESH_CLUSTER_PORT"] = str(free_port(ports))
        argv = [
            sys.executable, "-m", "hvmesh.core.cli.main", "up",
            "--fake-hosts", str(hosts), "--data-dir", str(Path(tmp) / "data"),
            "--nats-port", str(nats_port), "--leaf-port", str(leaf_port),
            "--metadata-port", str(metadata_port), "--monitor-port", "0",
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            wait_banner(proc, start_timeout, quiet)
            start_s = time.monotonic() - started
            nats = nats_server_of(proc.pid)
            before = cpu_seconds(proc.pid), cpu_seconds(nats)
            if not quiet:
                print(f"  idling for {seconds:g}s", file=sys.stderr, flush=True)
            time.sleep(seconds)  # the measure itself: CPU used over this window
            after = cpu_seconds(proc.pid), cpu_seconds(nats)
            memory = rss_mb(proc.pid), rss_mb(nats)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    hv, ns = ((a - b) / seconds for a, b in zip(after, before, strict=True))
    return IdleResult(
        hosts=hosts,
        start_s=round(start_s, 1),
        seconds=seconds,
        hvmesh_core=round(hv, 3),
        nats_server_core=round(ns, 3),
        total_core=round(hv + ns, 3),
        hvmesh_mb=memory[0],
        nats_server_mb=memory[1],
        total_mb=memory[0] + memory[1],
    )
