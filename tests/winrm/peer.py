"""Starting the WinRM test peer: Hyper-V hosts of one `World`, each behind its own HTTPS WinRM endpoint on 127.0.0.1, with a certificate from a test CA.

`HypervSim` holds the world and one `SimHost` per host (its endpoint's port, the model
host, the shells and scripts it saw). Authentication is Basic or NTLM over TLS (user
"hvmesh", password "winrm-secret"); NTLM is pyspnego's acceptor, which reads the
accounts from the file $NTLM_USER_FILE names, so starting a world points that variable
(process-wide) at the world's own file. The CA file is what [hyperv] ca_file points at.
`SimHost.stop` closes the listener and every connection (a host that drops off the
network); `start` listens again on the same port.

Fixtures (imported in tests/conftest.py): `hyperv_sim`, a world of two hosts HV1 and
HV2, and `hyperv_sim_factory`, which makes worlds with other hosts or credentials.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.winrm.hyperv import HostModel, HypervCmdlets, World
from tests.winrm.powershell import Interpreter
from tests.winrm.wsman import Endpoint, WinrmHTTPServer

USERNAME = "hvmesh"
PASSWORD = "winrm-secret"


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key), the server's for 127.0.0.1, made by openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60
        )

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=hvmesh-winrm-test-ca")  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@dataclass
class SimHost:
    """One Hyper-V host of the world and its WinRM endpoint."""

    name: str
    model: HostModel
    endpoint: Endpoint
    context: ssl.SSLContext
    users: dict[str, str]
    interpreter: Interpreter
    port: int = 0
    _server: WinrmHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        server = WinrmHTTPServer(self.endpoint, self.context, self.users, self.port)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        """Every cmdlet invocation run on this host, with its bound parameters."""
        return self.interpreter.calls


@dataclass
class HypervSim:
    world: World
    hosts: dict[str, SimHost]
    ca_file: Path
    username: str = USERNAME
    password: str = PASSWORD

    def host(self, name: str) -> SimHost:
        return self.hosts[name]

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop()


def start_hyperv_sim(
    workdir: Path,
    hosts: dict[str, dict[str, Any]] | None = None,
    username: str = USERNAME,
    password: str = PASSWORD,
) -> HypervSim:
    """A world of `hosts` ({name: HostModel settings}; default HV1 and HV2), each served
    on its own port."""
    ca, cert, key = make_certificate(workdir / "tls")
    users_file = workdir / "ntlm_users"
    users_file.write_text("".join(
        f"{domain}:{username}:{password}\n" for domain in ("", *(hosts or {"HV1": {}, "HV2": {}}))
    ))  # fmt: skip
    os.environ["NTLM_USER_FILE"] = str(users_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    world = World()
    sim = HypervSim(world, {}, ca, username, password)
    for name, settings in (hosts or {"HV1": {}, "HV2": {}}).items():
        model = world.add(name, **settings)
        cmdlets = HypervCmdlets(world, model)
        interpreter = Interpreter(cmdlets.cmdlets(), cmdlets.statics())
        endpoint = Endpoint(lambda i=interpreter: i, name)
        host = SimHost(name, model, endpoint, context, {username.lower(): password}, interpreter)
        host.start()
        sim.hosts[name] = host
    return sim


@contextlib.contextmanager
def running_hyperv_sim(workdir: Path, **kw: Any) -> Iterator[HypervSim]:
    sim = start_hyperv_sim(workdir, **kw)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def hyperv_sim(tmp_path: Path) -> Iterator[HypervSim]:
    """Two Hyper-V hosts, HV1 and HV2, each with its WinRM endpoint."""
    with running_hyperv_sim(tmp_path / "winrm") as sim:
        yield sim


@pytest.fixture
def hyperv_sim_factory(tmp_path: Path) -> Iterator[Callable[..., HypervSim]]:
    """start(hosts=None, username=..., password=...) -> a running HypervSim."""
    started: list[HypervSim] = []

    def start(**kw: Any) -> HypervSim:
        sim = start_hyperv_sim(tmp_path / f"winrm{len(started)}", **kw)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()
