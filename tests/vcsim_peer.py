"""Test peer: govmomi's vCenter simulator (tests/vcsim), a fresh process per test.

`tests/vcsim/build.sh` (run by tests/setup.sh) builds the simulator; `start_vcsim` runs
it on 127.0.0.1 with a free port, its own TMPDIR (the datastores are directories there)
and a bare environment, reads the lines it prints (certificate, thumbprint, URL) with a
timeout, and `Vcsim.stop` ends it (SIGTERM, then SIGKILL). The simulator also exits when
its stdin closes, so it never outlives the test process.

Fixtures (import them into the test module): `vcsim`, a simulator with the default
`Model`, and `vcsim_factory`, which starts simulators with other models or credentials.
Both stop what they started at teardown. Without the binary, they skip with
"vcsim is not built: run tests/setup.sh" (a failure under CI=true).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
import signal
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

NOT_BUILT = "vcsim is not built: run tests/setup.sh"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def binary_path() -> Path:
    """Where tests/vcsim/build.sh puts the simulator (HVMESH_VCSIM_BIN overrides)."""
    configured = os.environ.get("HVMESH_VCSIM_BIN")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "hvmesh" / "vcsim" / "vcsim"


@dataclass(frozen=True)
class Model:
    """The simulated inventory; names follow govmomi's model (DC0, DC0_C0, DC0_C0_H0...)."""

    datacenters: int = 1
    clusters: int = 2  # per datacenter
    cluster_hosts: int = 2  # per cluster
    standalone_hosts: int = 1  # per datacenter
    vms: int = 0  # per cluster (in its root pool) and per standalone host
    datastores: int = 2  # each mounted on every host of its datacenter
    portgroups: int = 2  # distributed port groups per datacenter, on the switch DVS0
    pools: int = 1  # child resource pools per cluster, besides the root pool "Resources"
    autostart: bool = True  # the model's VMs are powered on

    def argv(self) -> list[str]:
        return [
            f"-dc={self.datacenters}",
            f"-cluster={self.clusters}",
            f"-host={self.cluster_hosts}",
            f"-standalone-host={self.standalone_hosts}",
            f"-vm={self.vms}",
            f"-ds={self.datastores}",
            f"-pg={self.portgroups}",
            f"-pool={self.pools}",
            f"-autostart={'true' if self.autostart else 'false'}",
        ]

    def datacenter_names(self) -> list[str]:
        return [f"DC{d}" for d in range(self.datacenters)]

    def cluster_names(self, dc: str = "DC0") -> list[str]:
        return [f"{dc}_C{c}" for c in range(self.clusters)]

    def cluster_host_names(self, cluster: str) -> list[str]:
        return [f"{cluster}_H{h}" for h in range(self.cluster_hosts)]

    def standalone_host_names(self, dc: str = "DC0") -> list[str]:
        return [f"{dc}_H{h}" for h in range(self.standalone_hosts)]

    def host_names(self, dc: str = "DC0") -> list[str]:
        """Every host of the datacenter: standalone ones, then each cluster's."""
        names = self.standalone_host_names(dc)
        for cluster in self.cluster_names(dc):
            names += self.cluster_host_names(cluster)
        return names

    def datastore_names(self) -> list[str]:
        return [f"LocalDS_{i}" for i in range(self.datastores)]

    def portgroup_names(self, dc: str = "DC0") -> list[str]:
        return [f"{dc}_DVPG{i}" for i in range(self.portgroups)]

    def pool_names(self, cluster: str) -> list[str]:
        """The cluster's child resource pools (under its root pool "Resources")."""
        return [f"{cluster}_RP{i}" for i in range(1, self.pools + 1)]

    def vm_names(self, dc: str = "DC0") -> list[str]:
        owners = self.standalone_host_names(dc) + [f"{c}_RP0" for c in self.cluster_names(dc)]
        return [f"{owner}_VM{i}" for owner in owners for i in range(self.vms)]


class VcsimError(RuntimeError):
    """The simulator did not start (or stop) as asked; the message carries its stderr."""


class Vcsim:
    """One running simulator: where it listens, how to log in and what to trust."""

    def __init__(
        self, binary: Path, workdir: Path, model: Model, username: str, password: str
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.model = model
        self.username = username
        self.password = password
        self.host = "127.0.0.1"
        self.port = 0
        self.cert: Path | None = None  # PEM, self-signed: its own CA
        self.key: Path | None = None
        self.thumbprint: str | None = None  # SHA-1, "AB:CD:..." as vSphere shows it
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args: tuple[str, ...] = ()
        self._starts = 0

    @property
    def url(self) -> str:
        """The SDK endpoint, without credentials: https://127.0.0.1:PORT/sdk."""
        return f"https://{self.host}:{self.port}/sdk"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"vcsim-{self._starts}.log"

    def start(self, *extra_args: str, timeout: float = START_TIMEOUT) -> Vcsim:
        """Start the process (the first time on a free port) and wait for its URL line."""
        if self.process is not None and self.process.poll() is None:
            raise VcsimError("vcsim is already running")
        self._starts += 1
        self.extra_args = extra_args
        tmpdir = self.workdir / f"tmp-{self._starts}"
        tmpdir.mkdir(parents=True)
        argv = [str(self.binary), f"-l={self.host}:{self.port}", "-exit-on-eof"]
        argv += [f"-username={self.username}", f"-password={self.password}"]
        if self.cert is not None and self.key is not None:
            argv += [f"-tls-cert={self.cert}", f"-tls-key={self.key}"]
        else:
            argv += [f"-cert-dir={self.workdir}"]
        argv += self.model.argv() + list(extra_args)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmpdir)}
        env["HOME"] = str(self.workdir)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
            )
        try:
            self._read_banner(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_banner(self, timeout: float) -> None:
        assert self.process is not None and self.process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self.process.stdout

        def pump() -> None:
            for raw in stdout:
                lines.put(raw.decode(errors="replace").strip())
            lines.put(None)

        threading.Thread(target=pump, name="vcsim-stdout", daemon=True).start()
        values: dict[str, str] = {}
        while "VCSIM_URL" not in values:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise VcsimError(
                    f"vcsim printed no VCSIM_URL within {timeout}s: {self.stderr()}"
                ) from None
            if line is None:
                code = self.process.wait(timeout=STOP_TIMEOUT)
                raise VcsimError(f"vcsim exited ({code}) before serving: {self.stderr()}")
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        url = urlsplit(values["VCSIM_URL"])
        if url.scheme != "https" or url.hostname is None or url.port is None:
            raise VcsimError(f"vcsim printed an unexpected URL: {values['VCSIM_URL']}")
        self.host, self.port = url.hostname, url.port
        self.cert = Path(values["VCSIM_CERT"])
        self.key = Path(values["VCSIM_KEY"])
        self.thumbprint = values["VCSIM_THUMBPRINT"]

    def stderr(self) -> str:
        """What the current process wrote on stderr (its errors; tracing with -trace)."""
        try:
            return self.log_path.read_text(errors="replace").strip() or "(no output)"
        except FileNotFoundError:
            return "(no output)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status (None: never ran)."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def restart(self, timeout: float = START_TIMEOUT) -> Vcsim:
        """Stop, then start a fresh inventory on the same port with the same certificate."""
        self.stop()
        return self.start(*self.extra_args, timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung vCenter)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server and trusts exactly its certificate."""
        assert self.cert is not None
        return ssl.create_default_context(cafile=str(self.cert))

    def connect(self, username: str | None = None, password: str | None = None) -> Any:
        """A pyvmomi ServiceInstance, logged in over verified TLS; Disconnect it after use."""
        from pyVim.connect import SmartConnect

        return SmartConnect(
            host=self.host,
            port=self.port,
            user=self.username if username is None else username,
            pwd=self.password if password is None else password,
            sslContext=self.ssl_context(),
            connectionPoolTimeout=-1,
        )

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """`connect()` as a context manager yielding the ServiceInstance's content."""
        from pyVim.connect import Disconnect

        si = self.connect()
        try:
            yield si.RetrieveContent()
        finally:
            Disconnect(si)

    def datastore_file(self, path: str, data: bytes | None = None) -> bytes:
        """The file at "[ds] folder/name" through vCenter's datastore HTTP file API, as a
        guest's host would see it; given `data`, write that there first (PUT)."""
        import http.client
        import urllib.parse

        from pyVim.connect import Disconnect

        datastore, _, rel = path[1:].partition("] ")
        url = f"/folder/{urllib.parse.quote(rel)}?" + urllib.parse.urlencode(
            {"dcPath": "DC0", "dsName": datastore}
        )
        si = self.connect()
        try:
            headers = {"Cookie": str(si._stub.cookie).split(";", 1)[0].strip()}
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl_context())
            try:
                if data is not None:
                    conn.request("PUT", url, body=data, headers=headers)
                    put = conn.getresponse()
                    put.read()
                    assert put.status in (200, 201, 204), (put.status, path)
                conn.request("GET", url, headers=headers)
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200, (response.status, path)
                return body
            finally:
                conn.close()
        finally:
            Disconnect(si)


def served_thumbprint(host: str, port: int) -> str:
    """SHA-1 of the certificate a TLS server presents, as "AB:CD:..."."""
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, port)))
    return ":".join(f"{b:02X}" for b in hashlib.sha1(der).digest())


def start_vcsim(
    workdir: Path,
    model: Model | None = None,
    *extra_args: str,
    username: str = "hvmesh",
    password: str = "vcsim-secret",
    timeout: float = START_TIMEOUT,
) -> Vcsim:
    """Start a simulator whose files live under `workdir`; skips when it is not built."""
    binary = binary_path()
    if not os.access(binary, os.X_OK):
        pytest.skip(NOT_BUILT)
    workdir.mkdir(parents=True, exist_ok=True)
    sim = Vcsim(binary, workdir, model or Model(), username, password)
    return sim.start(*extra_args, timeout=timeout)


@contextlib.contextmanager
def running_vcsim(workdir: Path, model: Model | None = None, **kw: Any) -> Iterator[Vcsim]:
    sim = start_vcsim(workdir, model, **kw)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def vcsim(tmp_path: Path) -> Iterator[Vcsim]:
    """A fresh simulator with the default Model, user "hvmesh", password "vcsim-secret"."""
    with running_vcsim(tmp_path / "vcsim") as sim:
        yield sim


@pytest.fixture
def vcsim_factory(tmp_path: Path) -> Iterator[Callable[..., Vcsim]]:
    """start(model=None, *extra_args, username=..., password=...) -> a running Vcsim."""
    started: list[Vcsim] = []
    numbers = itertools.count()

    def start(model: Model | None = None, *extra_args: str, **kw: Any) -> Vcsim:
        sim = start_vcsim(tmp_path / f"vcsim{next(numbers)}", model, *extra_args, **kw)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def find_vm(content: Any, name: str) -> Any:
    """The simulator's VM named `name` (None if there is none), read with pyvmomi directly."""
    from pyVmomi import vim, vmodl

    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        for vm in view.view:
            try:
                if vm.name == name:
                    return vm
            except vmodl.fault.ManagedObjectNotFound:
                continue  # destroyed while the view was read
        return None
    finally:
        view.Destroy()
